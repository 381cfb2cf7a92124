"""The choice: which POPs answer a steered name for a client network.

Sans-IO and deterministic: the same config and the same health view give the same answer on
every instance, so several GeoDNS can stand behind one anycast address.

The rule, for a query of family 4 (A) or 6 (AAAA):

1. The candidates are the POPs with addresses of that family.
2. The client network is located (:mod:`.locate`). Known location: candidates ranked by
   great-circle distance divided by weight (ties by configuration order). Unknown location
   (private, reserved, not in the database, or an ECS source prefix of 0): configuration order.
3. The healthy candidates with room are kept: up (per the health view) and not full (their last
   ``/healthz`` reported ``load`` >= ``max_load``). If every up candidate is full, the full ones
   are kept (a full POP beats none).
4. The first ``answers`` kept POPs (``[[dns.steered]] answers``) give their addresses, in order.
   If no candidate is up, every candidate answers, nearest first (fail open, logged once per
   transition: never an empty answer).

The ECS scope (RFC 7871 section 7.2.1) is the prefix length of the client's address that the
location depended on (the rule's, or the geo database network's, lengthened past any
overlapping more specific rule), at most the address length; 0 when the answer cannot depend on
the address: an ECS source prefix of 0 (section 7.1.2 asks for an untailored answer), or at most
one candidate POP. It may exceed the source prefix length, which the RFC allows ("not specific
enough"; the resolver then caches for its source prefix only).
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
from dataclasses import dataclass
from typing import Any

from ..health.tracker import HealthView
from .config import IPNetwork, Pop, SteeringConfig
from .distance import great_circle_km
from headwater.geo.locate import Location, Locator

__all__ = ["Steered", "Steering", "Decision", "Candidate"]

log = logging.getLogger("headwater.dns.steering")

# Every Steering gets a distinct epoch, so generations of a reloaded steering never repeat the
# old one's and an answer cache keyed by generation cannot serve the old config's answers.
_epochs = itertools.count(1)

_MEMO_ENTRIES = 32_768

_UNTAILORED = Location(lat=None, lon=None, country="", prefix_len=0, source="none",
                       place="ECS source prefix 0")


@dataclass(frozen=True, slots=True)
class Steered:
    """A steered answer: A (or AAAA) rdata in answer order, its TTL and the ECS scope to send."""

    addresses: tuple[str, ...]   # never empty if any POP has an address of the family
    ttl: int                     # steered_ttl
    scope_prefix: int            # ECS SCOPE PREFIX-LENGTH to answer with (RFC 7871 7.2.1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """One candidate POP of a decision, with what the choice saw of it."""

    pop: Pop
    rank: int                    # position in distance / weight order (0 = best)
    distance_km: float | None    # None: location unknown
    up: bool
    full: bool
    chosen: bool
    reason: str                  # "chosen", or why not: "down", "full", "beyond answers", ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The whole of one steering decision (``steer`` keeps the addresses, ``explain`` all of it)."""

    family: int
    location: Location
    candidates: tuple[Candidate, ...]
    addresses: tuple[str, ...]
    scope_prefix: int
    fail_open: bool
    all_full: bool


class Steering:
    """Chooses the POPs of steered answers (see the module docstring).

    ``health`` is the POPs' up/down view (a ``HealthTracker``, or a ``StaticHealthView``);
    ``locator`` defaults to one built from ``config.geo`` (which opens the geo database).
    """

    def __init__(self, config: SteeringConfig, health: HealthView, *, locator: Locator | None = None) -> None:
        self.config = config
        self.health = health
        self.locator = locator if locator is not None else Locator(config.geo)
        self._epoch = next(_epochs)
        self._answers = {s.name: s.answers for s in config.steered}
        self._order = {p.name: i for i, p in enumerate(config.pops)}
        self._family_pops = {f: tuple(p for p in config.pops if p.addresses(f)) for f in (4, 6)}
        # fail-open state per family as last seen, for one log line per transition
        self._failing_open: dict[int, bool] = {4: False, 6: False}
        # decisions by first-choice POP (metrics: steering decisions per POP)
        self.decisions: dict[str, int] = {p.name: 0 for p in config.pops}
        self.decisions_by_source: dict[str, int] = {"ecs": 0, "resolver": 0}
        self.fail_open_answers = 0
        # answers by (family, answers, location), valid for one health generation: the locator
        # memoises the location, this the ranking and filtering (tens of microseconds) after it
        self._memo: dict[tuple[int, int, Location], tuple[Steered, str | None, bool]] = {}
        self._memo_generation = -1

    @property
    def generation(self) -> int:
        """Changes whenever the health view or the config (a new Steering) changes."""
        return (self._epoch << 32) + self.health.generation

    def answers(self, name: str) -> int:
        """How many POPs an answer for ``name`` holds (1 for a name not in ``[[dns.steered]]``)."""
        return self._answers.get(name, 1)

    def steer(self, name: str, family: int, client: IPNetwork, from_ecs: bool) -> Steered:
        """The answer for ``name`` (relative to the zone, lowercase), family 4 or 6, for
        ``client``: the ECS source network (``from_ecs``) or the resolver's address as a /32 or
        /128."""
        answers = self.answers(name)
        location = self._locate(client)
        generation = self.health.generation
        if generation != self._memo_generation:
            self._memo.clear()  # the health view changed: every remembered answer may be wrong
            self._memo_generation = generation
        key = (family, answers, location)
        hit = self._memo.get(key)
        if hit is None:
            decision = self._decide(family, location, answers)
            first = next((c.pop.name for c in decision.candidates if c.chosen), None)
            hit = (Steered(decision.addresses, self.config.steered_ttl, decision.scope_prefix),
                   first, decision.fail_open)
            if len(self._memo) >= _MEMO_ENTRIES:
                self._memo.clear()
            self._memo[key] = hit
        steered, first, fail_open = hit
        if first is not None:
            self.decisions[first] = self.decisions.get(first, 0) + 1
        self.decisions_by_source["ecs" if from_ecs else "resolver"] += 1
        if fail_open:
            self.fail_open_answers += 1
        return steered

    def _locate(self, client: IPNetwork) -> Location:
        return _UNTAILORED if client.prefixlen == 0 else self.locator.locate(client)

    def decide(self, family: int, client: IPNetwork, answers: int) -> Decision:
        """The full decision for ``client`` (see the module docstring), without counting it or
        logging a fail-open transition (what ``explain`` shows)."""
        return self._decide(family, self._locate(client), answers, note=False)

    def _decide(self, family: int, location: Location, answers: int, *, note: bool = True) -> Decision:
        if family not in (4, 6):
            raise ValueError(f"family must be 4 or 6, not {family!r}")
        pops = self._family_pops[family]
        if location.known:
            assert location.lat is not None and location.lon is not None
            dist = {p.name: great_circle_km(location.lat, location.lon, p.lat, p.lon) for p in pops}
            ranked = sorted(pops, key=lambda p: (dist[p.name] / p.weight, self._order[p.name]))
        else:
            dist = {}
            ranked = list(pops)
        health = self.health
        up = {p.name: health.is_up(p.name) for p in ranked}
        full = {p.name: health.is_full(p.name) for p in ranked}
        room = [p for p in ranked if up[p.name] and not full[p.name]]
        all_full = not room and any(up.values())
        fail_open = not any(up.values()) and bool(ranked)
        # fail open: every candidate, however many answers are asked for; the health view may be
        # what is broken (the DNS cut off from the POPs), and clients try the addresses in turn
        chosen = ranked if fail_open else (room or [p for p in ranked if up[p.name]])[:answers]
        if note:
            self._note_fail_open(family, fail_open, len(ranked))
        chosen_names = {p.name for p in chosen}
        candidates = tuple(
            Candidate(pop=p, rank=i, distance_km=dist.get(p.name), up=up[p.name], full=full[p.name],
                      chosen=p.name in chosen_names,
                      reason=_reason(p.name in chosen_names, up[p.name], full[p.name], fail_open, all_full))
            for i, p in enumerate(ranked))
        addresses = tuple(a for p in chosen for a in p.addresses(family))
        # the untailored location (ECS source prefix 0) has prefix_len 0 already
        scope = 0 if len(pops) <= 1 else location.prefix_len
        return Decision(family=family, location=location, candidates=candidates, addresses=addresses,
                        scope_prefix=scope, fail_open=fail_open, all_full=all_full)

    def _note_fail_open(self, family: int, fail_open: bool, candidates: int) -> None:
        if fail_open == self._failing_open[family]:
            return
        self._failing_open[family] = fail_open
        if fail_open:
            log.warning("no IPv%d POP is up: answering with all %d (fail open)", family, candidates,
                        extra={"event": "dns.steering.fail_open", "family": family, "pops": candidates})
        else:
            log.info("an IPv%d POP is up again: fail-open ends", family,
                     extra={"event": "dns.steering.fail_open_ended", "family": family})

    def explain(self, client_ip: str, name: str | None = None) -> dict[str, Any]:
        """Why ``client_ip`` gets the POPs it gets, as a JSON-able dict (``headwater dns explain``).

        ``name`` picks the steered name whose answer count applies (default: the first steered
        name, else 1). Both families are decided; each POP lists its distance, weight, health,
        load and, per family, whether it was chosen or why not.
        """
        addr = ipaddress.ip_address(client_ip)
        client = ipaddress.ip_network(f"{addr}/{addr.max_prefixlen}")
        if name is None:
            name = self.config.steered[0].name if self.config.steered else ""
        answers = self.answers(name)
        decisions = {f: self.decide(f, client, answers) for f in (4, 6)}
        location = decisions[4].location
        pops = []
        for p in self.config.pops:
            per_family: dict[str, str] = {}
            distance = None
            for f, qtype in ((4, "A"), (6, "AAAA")):
                cand = next((c for c in decisions[f].candidates if c.pop.name == p.name), None)
                per_family[qtype] = cand.reason if cand is not None else f"no IPv{f} address"
                if cand is not None and cand.distance_km is not None:
                    distance = cand.distance_km
            pops.append({
                "name": p.name, "region": p.region,
                "distance_km": None if distance is None else round(distance, 1),
                "weight": p.weight,
                "score_km": None if distance is None else round(distance / p.weight, 1),
                "health": self.health.state(p.name), "up": self.health.is_up(p.name),
                "load": self.health.load(p.name), "max_load": p.max_load,
                "full": self.health.is_full(p.name),
                "ipv4": list(p.ipv4), "ipv6": list(p.ipv6),
                "decision": per_family,
            })
        return {
            "client": str(addr),
            "name": name,
            "answers_per_query": answers,
            "location": {"source": location.source, "lat": location.lat, "lon": location.lon,
                         "country": location.country, "place": location.place,
                         "prefix_len": location.prefix_len},
            "answer": {qtype: {"addresses": list(decisions[f].addresses),
                               "scope_prefix": decisions[f].scope_prefix,
                               "fail_open": decisions[f].fail_open,
                               "all_full": decisions[f].all_full}
                       for f, qtype in ((4, "A"), (6, "AAAA"))},
            "ttl": self.config.steered_ttl,
            "pops": pops,
        }


def _reason(chosen: bool, up: bool, full: bool, fail_open: bool, all_full: bool) -> str:
    if chosen:
        if fail_open:
            return "chosen (fail open: no POP is up)"
        if full:
            return "chosen (full, but every up POP is full)"
        return "chosen"
    if fail_open:
        return "beyond answers (fail open)"
    if not up:
        return "down"
    if full and not all_full:
        return "full"
    return "beyond answers"
