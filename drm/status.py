"""The licence server's part of ``headwater status``: its DETAILS text from /healthz."""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["licence_text"]


def licence_text(details: Mapping[str, Any]) -> str:
    """Keys stored, licences granted and refused, KEKs loaded."""
    shown = []
    for key, label in (("keys", "keys"), ("granted", "granted"), ("refused", "refused"), ("keks", "KEKs")):
        value = details.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            shown.append(f"{label} {value}")
    return ", ".join(shown)
