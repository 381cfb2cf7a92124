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
host keeps its tokens and secrets valid. Each host keeps the database's sealed blob as that
file, so that it starts (and signs, and checks secrets) while the database is down.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Callable

from headwater.sealed import (MAX_SEALED_BYTES, SealedError, Sealer, load_or_create, publish_private,
                              read_owner_only, read_sealed)

from ..catalogue.errors import BackendUnavailable

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
    try:
        with db.transaction(write=False) as tx:
            row = tx.one("SELECT value FROM cluster_secrets WHERE name = ?", (name,))
    except BackendUnavailable:
        # The database is down as this host starts: the copy it kept of the cluster's secret
        # (below) lets it sign and check tokens meanwhile. None kept: it cannot, say so.
        try:
            return read_sealed(path, sealer, purpose)
        except FileNotFoundError:
            raise BackendUnavailable(f"{source} cannot be read and this host keeps no copy of it "
                                     f"({path}): start it once the database answers") from None
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
    sealed = base64.b64decode(row[0])
    secret = sealer.open(sealed, purpose, source=source)
    _keep_copy(path, sealed)
    return secret


def _keep_copy(path: Path, sealed: bytes) -> None:
    """The database's sealed blob kept as this host's file (written only when it differs): a
    secret of the cluster is never changed once made, so the copy stays right, and a later
    start while the database is down reads it."""
    try:
        if read_owner_only(path, MAX_SEALED_BYTES) == sealed:
            return
    except FileNotFoundError:
        pass
    except SealedError:
        pass  # replaced below by the database's
    publish_private(path, sealed)
