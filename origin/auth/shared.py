"""The built-in issuer's secrets made once for the whole cluster: the signing key, the sealed
client secrets and the sealed user passwords.

With the SQLite catalogue (one origin host) each is a sealed file in the origin's data_dir, as
always (:func:`headwater.sealed.load_or_create`). With PostgreSQL (several origin hosts) each is
a row of ``cluster_secrets`` in the catalogue's database, the sealed blob (sealed under the
cluster secret, so the database never holds a secret in the clear): the first host (or
``headwater token``) that needs it INSERTs its candidate with ON CONFLICT DO NOTHING and every
one reads back the row that won, so a token one host signs verifies on every other, and a
client's secret is the same whichever host it is shown to. A host that already had a sealed file
(a single host grown into several) offers that file's secret as its candidate: the first such
host keeps its tokens and secrets valid.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Callable

from headwater.sealed import Sealer, load_or_create, read_sealed

__all__ = ["shared_secret"]


def shared_secret(cluster: Any, node: Any, name: str, purpose: bytes, create: Callable[[], bytes], *,
                  db: Any = None) -> bytes:
    """The secret ``name`` (``issuer-es256``, ``client-<id>``, ``user-<name>``), made with
    ``create()`` by whichever host asks first. ``db``: the open catalogue, if the caller has
    one (else one is opened for the call, PostgreSQL only)."""
    sealer = Sealer.from_config(cluster)
    path = Path(node.data_dir) / f"{name}.sealed"
    config = node.catalogue_config
    if config.backend != "postgresql":
        path.parent.mkdir(parents=True, exist_ok=True)
        return load_or_create(path, sealer, purpose, create)[0]
    if db is None:
        from ..catalogue import open_catalogue

        with open_catalogue(config) as opened:
            return shared_secret(cluster, node, name, purpose, create, db=opened)
    source = f"cluster_secrets {name!r} in the catalogue's database"
    with db.transaction(write=False) as tx:
        row = tx.one("SELECT value FROM cluster_secrets WHERE name = ?", (name,))
    if row is None:
        try:
            candidate = read_sealed(path, sealer, purpose)  # this host's secret from before
        except FileNotFoundError:
            candidate = create()
        blob = base64.b64encode(sealer.seal(candidate, purpose)).decode()
        with db.transaction(write=True) as tx:
            tx.run("INSERT INTO cluster_secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                   (name, blob))
            row = tx.one("SELECT value FROM cluster_secrets WHERE name = ?", (name,))
        assert row is not None
    return sealer.open(base64.b64decode(row[0]), purpose, source=source)
