"""dnspython for the tests, imported past the worktree's own ``dns/`` folder.

The GeoDNS's sources live in ``dns/`` at the top of the tree (installed as ``headwater.dns``), and
pytest puts the tree's root first on ``sys.path`` (so does ``python -m pytest`` with the current
folder): a plain ``import dns.message`` would then find that folder instead of dnspython. This
module imports dnspython with the root left out of ``sys.path`` for the duration, after which
``import dns.x`` anywhere resolves inside dnspython's package. Import it before any ``dns.*``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]


def _is_root(entry: str) -> bool:
    try:
        return Path(entry or ".").resolve() == _ROOT
    except OSError:
        return False


_local = sys.modules.get("dns")
if _local is not None and Path(getattr(_local, "__file__", "") or "").resolve().parent == _ROOT / "dns":
    del sys.modules["dns"]
_saved = list(sys.path)
sys.path[:] = [p for p in sys.path if not _is_root(p)]
try:
    for _name in ("dns", "dns.message", "dns.query", "dns.edns", "dns.flags", "dns.rcode", "dns.rdatatype",
                  "dns.rdataclass", "dns.name", "dns.exception", "dns.rrset"):
        importlib.import_module(_name)
finally:
    sys.path[:] = _saved

import dns  # noqa: E402  — dnspython's, now in sys.modules

__all__ = ["dns"]
