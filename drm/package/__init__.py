"""The packager: progressive MP4 in; CMAF segments (clear or encrypted) and the DASH and HLS
manifests that describe them out, through a sink (a local folder or the object store)."""
