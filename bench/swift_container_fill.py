"""Write object rows straight into a Swift container's databases (run by Swift's own Python).

Listing a container reads its SQLite database alone; filling 100,000 keys through Swift's
proxy takes half an hour here (~55 PUTs a second), most of it the object servers' fsyncs. The
listing scenario of `bench objstore` therefore writes Swift's rows as its object servers' container
updates would (``ContainerBroker.merge_items``: name, timestamp, size, type, ETag), into every
replica of the container's database, without the objects. What a listing then measures is the
same as after real PUTs: the proxy, s3api and the container server reading that database.

Usage (Debian's python3-swift lives in the system Python, not the bench's venv)::

    /usr/bin/python3 -I swift_container_fill.py   # -I: bench/dns.py must not shadow dnspython DEVICES_DIR CONTAINER SIZE ETAG < names

Names come one per line on stdin; prints the number of replicas written and rows per replica.
Imports nothing from Headwater.
"""

import sys
import time
from pathlib import Path


def main() -> int:
    from swift.common.ring import Ring
    from swift.common.utils import Timestamp
    from swift.container.backend import ContainerBroker

    devices, container, size, etag = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    names = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    # A container PUT answers once a quorum of its replicas exist: wait for the last one, or
    # the listing might read a replica holding no rows (no replicator runs in the bench).
    want = Ring(str(devices.parent / "etc"), ring_name="container").replica_count
    deadline = time.monotonic() + 10
    while True:
        brokers = []
        for db in sorted(devices.glob("*/containers/*/*/*/*.db")):
            broker = ContainerBroker(str(db))
            if broker.get_info()["container"] == container:
                brokers.append(broker)
        if len(brokers) >= want or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if len(brokers) < want:
        print(f"{len(brokers)} of {want} databases of container {container!r} under {devices}", file=sys.stderr)
        return 1
    for broker in brokers:
        for at in range(0, len(names), 10_000):
            stamp = Timestamp.now().internal
            broker.merge_items([{"name": n, "created_at": stamp, "size": size,
                                 "content_type": "application/octet-stream", "etag": etag, "deleted": 0,
                                 "storage_policy_index": 0, "ctype_timestamp": stamp, "meta_timestamp": stamp}
                                for n in names[at:at + 10_000]])
    print(f"{len(brokers)} {len(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
