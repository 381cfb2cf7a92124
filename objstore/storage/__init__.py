"""The storage node: checksummed fragment files on one disk, served over RPC (``daemon.py``), its
scrubber, and ``client.py``, what other daemons import to reach it."""
