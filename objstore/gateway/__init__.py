"""The S3 gateway: SigV4, the S3 REST API and erasure coding over the storage nodes (``daemon.py``)."""
