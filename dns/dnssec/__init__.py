"""DNSSEC: ECDSA P-256 keys kept sealed, online signing of answers, white-lie denial, the DS."""
