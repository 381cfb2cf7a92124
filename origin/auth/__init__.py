"""OAuth2 for the origin: RFC 9068 JWT access tokens verified against an issuer's keys, and a
small built-in issuer (the client-credentials grant, RFC 6749 §4.4)."""
