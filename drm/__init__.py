"""DRM: a CENC/cbcs packager (ISO-BMFF in, CMAF + DASH + HLS out) and a ClearKey licence server.

Imported as ``headwater.drm``. The box code (``bmff/``), the encryption of samples and the
manifests are sans-IO and driven by tests without files or sockets; the packager's command and
the licence server's daemon are thin shells around them.
"""
