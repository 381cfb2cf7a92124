"""Search ranking, sans-IO: the per-word impacts stored on write, and the top-k merge that reads
them at query time so a query's cost follows the page it asks for, not the number of matches.

Score of a title for a query = the sum over the query's groups (:class:`~.query.TermGroup`) of
the group's best alternative's ``weight × impact``:

- ``impact(word, title)`` is BM25F-like and depends on the title alone, so it is computed once
  when the title is indexed (``search_postings``): per field (title, people, description, weights
  10 / 4 / 1 as the FTS5 ranking had), the word's count saturated by ``K1`` and normalised by the
  field's length against a fixed reference length. Per-field normalisation is what makes "Night
  Train" outrank "Night Train to Lisbon" for "night train" (the FTS5 ranking normalised by the
  whole document and needed a separate coverage factor for that). A fixed reference rather than
  the catalogue's average keeps a stored impact valid however the catalogue grows, and makes a
  bulk import and titles published one by one score alike.
- ``weight`` is the word's IDF (from its document count in ``search_words``), read per query; a
  prefix's completions share the IDF of the whole prefix (as FTS5 scored a prefix phrase).

Because the weight is per word, each word's postings sorted by impact are sorted by score: the
top-k merge (:class:`TopK`, Fagin's threshold algorithm) walks each group's lists from the best
posting down, looks every newly seen title up in the other groups (random access), and stops
once the k-th best complete score is at least what any unseen title could still reach.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from dataclasses import dataclass, field

from .text import words

__all__ = ["K1", "FIELD_WEIGHTS", "PREFIX_LENGTHS", "impacts", "prefix_impacts", "prefix_key", "idf",
           "max_impact", "TopK", "ListCursor"]

K1 = 1.2
# (weight, b, reference length in words) for title, people, description.
FIELD_WEIGHTS: tuple[tuple[float, float, float], ...] = ((10.0, 0.75, 3.0), (4.0, 0.75, 4.0), (1.0, 0.75, 16.0))


# Prefix lists: for each title and each 2- and 3-letter prefix of its words, the highest impact
# of its words that are longer than the prefix (a completion), under the key "*" + prefix ("*"
# sorts before every letter and digit, so a key is never inside a range of words). A query's
# last word (search as you type) walks its prefix's list as one list: one walk finds the best
# titles for every completion, where FTS5 merged the doclists of every word with the prefix.
PREFIX_LENGTHS = (2, 3)


def prefix_key(term: str) -> str | None:
    """The prefix list that holds every completion of ``term`` (a superset past 3 letters)."""
    if len(term) < PREFIX_LENGTHS[0]:
        return None
    return "*" + term[:PREFIX_LENGTHS[-1]]


def prefix_impacts(found: dict[str, float]) -> dict[str, float]:
    """The title's prefix-list entries from its words' impacts (see PREFIX_LENGTHS)."""
    out: dict[str, float] = {}
    for w, v in found.items():
        for n in PREFIX_LENGTHS:
            if len(w) > n:
                key = "*" + w[:n]
                if v > out.get(key, 0.0):
                    out[key] = v
    return out


def max_impact() -> float:
    """The largest impact any word can have (every field, saturated): a safe bound."""
    return sum(w for w, _, _ in FIELD_WEIGHTS) * (K1 + 1.0)


def impacts(title: str, people: str, description: str) -> dict[str, float]:
    """Each distinct normalised word of the title's fields with its impact (see the module)."""
    out: dict[str, float] = {}
    for text, (weight, b, ref) in zip((title, people, description), FIELD_WEIGHTS):
        found = words(text)
        if not found:
            continue
        norm = 1.0 - b + b * len(found) / ref
        for w, tf in Counter(found).items():
            out[w] = out.get(w, 0.0) + weight * tf * (K1 + 1.0) / (tf + K1 * norm)
    # Rounded so that the value read back from either database is the value compared against.
    return {w: round(v, 6) for w, v in out.items()}


def idf(docs: int, total: int) -> float:
    """BM25's IDF of a word in ``docs`` of ``total`` documents (never negative)."""
    docs = max(0, min(docs, total))
    return math.log(1.0 + (total - docs + 0.5) / (docs + 0.5))


@dataclass(slots=True)
class ListCursor:
    """Where a sorted walk of one word's postings (``impact`` desc, ``title_id`` desc) stands."""

    word: str
    group: int
    weight: float
    # The last (impact, title_id) read; the next read starts below it.
    after: tuple[float, int] | None = None
    # The highest impact the unread rest can hold (the last one read; the word's maximum before).
    frontier: float = 0.0
    exhausted: bool = False
    # How many postings the next read takes (doubled by each read).
    batch: int = 32
    # Whether its last read left its frontier where it was (a plateau of equal impacts).
    flat: bool = False


@dataclass(slots=True)
class TopK:
    """The best scores offered so far (each title offered once)."""

    k: int
    scores: dict[int, float] = field(default_factory=dict)
    # The k best scores, a min-heap: the k-th is its root. (kth() took the k largest of every
    # score offered, twice per batch of a walk: 2 ms of a 2,000-title walk's 20.)
    best: list[float] = field(default_factory=list)

    def offer(self, title_id: int, score: float) -> None:
        self.scores[title_id] = score
        if len(self.best) < self.k:
            heapq.heappush(self.best, score)
        elif score > self.best[0]:
            heapq.heapreplace(self.best, score)

    def ranked(self) -> list[tuple[int, float]]:
        """(title_id, score), best first; ties newest (highest id) first."""
        return sorted(self.scores.items(), key=lambda kv: (-kv[1], -kv[0]))

    def page(self) -> list[tuple[int, float]]:
        """The best k (title_id, score), best first; ties newest first. (Sorting every title a
        long walk scored, 2,000 or more, cost more than the walk's last lookup.)"""
        if len(self.best) < self.k:
            return self.ranked()
        kth = self.best[0]
        return sorted(((t, s) for t, s in self.scores.items() if s >= kth), key=lambda kv: (-kv[1], -kv[0]))[:self.k]

    def kth(self) -> float | None:
        """The k-th best score so far (``None`` before k titles are scored)."""
        return self.best[0] if len(self.best) >= self.k else None
