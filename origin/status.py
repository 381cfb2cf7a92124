"""The origin's part of ``headwater status``: its DETAILS text from /healthz."""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["origin_text", "transcoder_text"]


def origin_text(details: Mapping[str, Any]) -> str:
    """Uploads recorded and completed, bytes received, tokens issued."""
    shown = []
    for key, label in (("uploads", "uploads"), ("completed", "completed"), ("bytes", "bytes in"),
                       ("tokens_issued", "tokens")):
        value = details.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            shown.append(f"{label} {value}")
    return ", ".join(shown)


def transcoder_text(details: Mapping[str, Any]) -> str:
    """Jobs published, retried, failed, and the job running now (per worker that answered)."""
    shown = []
    for key, label in (("jobs_published", "published"), ("jobs_retried", "retried"), ("jobs_failed", "failed"),
                       ("leases_lost", "leases lost")):
        value = details.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and (value or key == "jobs_published"):
            shown.append(f"{label} {value}")
    current = details.get("current")
    if isinstance(current, dict):
        shown.append(f"running job {current.get('job')} (title {current.get('title')})")
    else:
        shown.append("idle")
    return ", ".join(shown)
