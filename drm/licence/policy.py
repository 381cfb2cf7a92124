"""What a licence for a title may be: its session types, how long a licence stays obtainable,
and whether a token may be used once only. Sans-IO.

A ClearKey licence carries no duration of its own (the W3C format has only ``keys`` and
``type``), so the duration is enforced where the server can enforce it: a licence for a title
is granted only while ``iat + licence_duration_s`` (and the token's rental window, and its
expiry) has not passed, and the end is written in the audit line. ``persistent-license`` is
granted only for titles whose policy allows it (a persistent session survives the page).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from headwater.config import Reader

from ..errors import Forbidden
from .clearkey import SESSION_TYPES

__all__ = ["TitlePolicy", "Policy", "read_policy", "licence_end"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TitlePolicy:
    """The rules for one title (or the default for every title not named)."""

    types: frozenset[str] = frozenset({"temporary"})
    # A licence is obtainable at most this long after the token was issued (iat).
    licence_duration_s: float = 24 * 3600.0
    # Tokens for this title are single-use: a jti seen before (and still unexpired) is refused.
    single_use: bool = False
    # Tokens for this title must name a device.
    require_device: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """The default title policy and the per-title overrides."""

    default: TitlePolicy = TitlePolicy()
    titles: Mapping[str, TitlePolicy] = field(default_factory=dict)

    def for_title(self, title: str) -> TitlePolicy:
        return self.titles.get(title, self.default)

    def check(self, titles: set[str] | frozenset[str], session_type: str, *, device: str | None) -> None:
        """Raise Forbidden unless every policy of ``titles`` allows ``session_type`` (and has the
        device it requires)."""
        for title in sorted(titles):
            p = self.for_title(title)
            if session_type not in p.types:
                raise Forbidden(f"title {title}: a {session_type} licence is not allowed "
                                f"(allowed: {', '.join(sorted(p.types))})")
            if p.require_device and not device:
                raise Forbidden(f"title {title}: the token must name a device")

    def single_use(self, titles: set[str] | frozenset[str]) -> bool:
        return any(self.for_title(t).single_use for t in titles)


def licence_end(policy: Policy, titles: set[str] | frozenset[str], *, iat: float, exp: float,
                rental_end: float | None) -> float:
    """When the licences for ``titles`` stop being obtainable under this token: the earliest of
    its expiry, its rental end and each title's ``iat + licence_duration_s``."""
    end = exp if rental_end is None else min(exp, rental_end)
    for t in titles:
        end = min(end, iat + policy.for_title(t).licence_duration_s)
    return end


_KEYS = {"types", "licence_duration_seconds", "single_use", "require_device"}


def _read_title_policy(r: Reader, data: Mapping[str, Any], p: str, base: TitlePolicy) -> TitlePolicy:
    types = r.get(data, "types", p, list, sorted(base.types))
    for t in types:
        if t not in SESSION_TYPES:
            raise r.error(f"{p}.types", f"{t!r} is not one of {', '.join(SESSION_TYPES)}")
    if not types:
        raise r.error(f"{p}.types", "allow at least one session type")
    return TitlePolicy(types=frozenset(types),
                       licence_duration_s=r.positive(data, "licence_duration_seconds", p, base.licence_duration_s),
                       single_use=r.get(data, "single_use", p, bool, base.single_use),
                       require_device=r.get(data, "require_device", p, bool, base.require_device))


def read_policy(r: Reader, default: Mapping[str, Any], titles: Any, p: str) -> Policy:
    """``[licence.policy]`` (the default) and ``[[licence.titles]]`` (``title`` plus any key of
    the default, which it inherits otherwise)."""
    r.check_keys(default, f"{p}.policy", _KEYS)
    base = _read_title_policy(r, default, f"{p}.policy", TitlePolicy())
    if not isinstance(titles, list):
        raise r.error(f"{p}.titles", "expected an array of tables ([[licence.titles]])")
    out: dict[str, TitlePolicy] = {}
    for i, item in enumerate(titles):
        q = f"{p}.titles[{i}]"
        if not isinstance(item, dict):
            raise r.error(q, "expected a table")
        r.check_keys(item, q, _KEYS | {"title"})
        title = r.get(item, "title", q, (str, int), required=True)
        title = str(title)
        if title in out:
            raise r.error(f"{q}.title", f"title {title} has two policies")
        out[title] = _read_title_policy(r, item, q, base)
    return Policy(default=base, titles=out)
