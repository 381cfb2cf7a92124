"""The catalogue and job queue over SQL: one implementation, two dialects (:mod:`.sqlite`,
:mod:`.postgres`).

:class:`SqlCatalogue` holds every query that both databases run alike (SQL written with ``?``
placeholders, translated for psycopg); a backend supplies transactions (:meth:`_tx`), the
migrations, the full-text match and rank, and how a lease row is locked. Every value reaches the
database as a bound parameter; the only SQL built at run time is the list of filter clauses and
of ``?`` placeholders, from fixed strings.

The API is synchronous: the origin daemon calls it from a worker thread
(``anyio.to_thread.run_sync``), the backends are thread-safe.
"""

from __future__ import annotations

import heapq
import json
import random
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import Any, Callable, Collection, Iterable, Sequence

from headwater.clock import SYSTEM_CLOCK, Clock

from .breaker import Breaker
from .config import CatalogueConfig
from .errors import BadQuery, IllegalTransition, InvalidTitle, JobNotFound, LeaseLost, TitleNotFound
from .query import (SearchHit, SearchPage, SearchQuery, TermGroup, check_query, plan_groups,
                    query_words)
from .records import (Job, JobState, Lease, Person, Rendition, Title, TitleDraft, TitleState,
                      check_transition, validate_draft)
from .ranking import PREFIX_LENGTHS, ListCursor, TopK, idf, impacts, max_impact, prefix_impacts, prefix_key
from .text import deletions, max_edits, normalised_text
from .versions import DEAD, FAILED, SUPERSEDED, RetiredVersion, folders, parse_version_prefix

__all__ = ["SqlCatalogue", "Tx"]

MAX_KEY_CHARS = 200
MAX_ERROR_CHARS = 2000
_DIED_ON_LAST_ATTEMPT = "the worker stopped answering (lease expired) on its last attempt"
MAX_PAYLOAD_BYTES = 16 * 1024
# The ranking's bounds (_top_k): completions of a prefix read from the vocabulary, how many of
# them a one-letter prefix walks (its most frequent), how many a prefix past three letters walks
# one by one before it walks its 3-letter list instead, and the postings one search reads at most.
PREFIX_SCANNED = 2000
PREFIX_WALKED = 16
PREFIX_OWN_LISTS = 64
MAX_WALK = 2000
# A multi-word query one of whose words has at most this many postings is answered by
# intersecting that word's titles with the others (exact) rather than by the walk.
INTERSECT_MAX = 1500
# A category/language filter leaving at most this many titles is applied as a set of titles.
FILTERED_SET_MAX = 5000
# A group's lists of at most SMALL_LIST postings each, up to MERGED_MAX postings in all, are read
# in one statement and walked as one list (store._top_k).
SMALL_LIST = 256
MERGED_MAX = 2048
# Scores are summed in Python for the bounds and by the database for the page: a bound this close
# to the k-th score is counted as reaching it.
_EPSILON = 1e-9
# PostgreSQL: a lookup reads the words' whole lists, not one probe per title, when they hold
# fewer postings than this many per title (store._lookup_select).
LOOKUP_SCAN_RATIO = 16
# How much lower than the walk's bound test a test in SQL may keep a title (the same sums in
# another order may round differently; the test here is the exact one).
_LOOSE = 1e-6
# Above every character a normalised word holds: a prefix's words lie in [prefix, prefix + this).
_TOP_CHAR = "\U0010ffff"
# The walk's name for a group's small lists read as one (never a word: a word is not empty).
_MERGED = ""


class Tx(ABC):
    """One transaction: ``rows``/``one`` read, ``run`` writes and returns the row count;
    ``memo`` keeps what one search reads twice."""

    memo: dict[str, Any]

    @abstractmethod
    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]: ...

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        found = self.rows(sql, params)
        return found[0] if found else None

    @abstractmethod
    def run(self, sql: str, params: Sequence[Any] = ()) -> int: ...


_TITLE_COLS = ("id, title, description, category, year, language, duration_s, state, progress, "
               "renditions, upload, owner, error, created, updated")
_JOB_COLS = ("id, kind, title_id, key, payload, state, attempts, max_attempts, run_at, lease_expires, "
             "leased_by, last_error, created, updated, lease_token")
_RETIRED_COLS = "prefix, title_id, job_id, attempt, reason, since, claimed_by, claimed_until"


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class SqlCatalogue(ABC):
    """The catalogue (titles, search) and the job queue, on one database."""

    # How a row picked for a lease is locked against other workers (PostgreSQL: FOR UPDATE SKIP
    # LOCKED; SQLite: nothing, the writer transaction already excludes every other writer).
    lease_lock_clause = ""
    search_key = "rowid"
    # SELECTs over one bound JSON array: of strings, and of [a, b] pairs.
    # Both yield a column "value"; json_pair reads an [a, b] element.
    json_rows = "json_each(?)"
    json_pair_rows = "json_each(?)"
    json_pair = "json_extract(value, '$[0]'), json_extract(value, '$[1]')"
    json_pair_int = json_pair  # an [a, n] element, n as an integer
    # The integers of one bound JSON array, as a subquery's select list.
    json_ints = "SELECT value FROM json_each(?)"
    # How a posting walk joins its title's filter columns: SQLite must be told to drive the join
    # from the postings (CROSS JOIN) and to read the narrow covering index.
    postings_join = "CROSS JOIN titles t INDEXED BY titles_search_filters"
    titles_filters = "titles t INDEXED BY titles_search_filters"
    # SQLite's planner walks the postings index in order through a CROSS JOIN (so the walk may
    # join and filter in one statement); PostgreSQL's may read a whole list and sort it, so
    # there the walk reads a batch in order first and marks which postings pass (store._top_k).
    walk_joins_in_order = True
    greatest = "max"
    # A lookup of given titles reads the postings' primary key, never the impact index (which
    # SQLite's planner may pick for a word list: a common word's whole list).
    postings_by_title = " NOT INDEXED"
    # How the walk scores the titles it reads: SQLite by its per-title subqueries (_scored: the
    # rarest group first, a title missing it stops there), PostgreSQL from the titles' postings
    # read in one statement (_looked_up: one index-only probe per title and word, no subplans).
    score_by_lookup = False
    # The count (_count) of a query whose rarest group is a prefix past three letters with at
    # most this many postings probes that group's titles rather than walk the full-text index
    # (PostgreSQL's GIN count reads a heap page per match; SQLite's FTS5 walk was measured
    # faster than the probes on every such query of the bench: sqlite.py sets 0).
    long_prefix_count_max = FILTERED_SET_MAX
    # Whether a ranking that scores every match in one statement (a rare word's titles, a rare
    # filter's) keeps them for the capped count, instead of the count checking each title for
    # every word again (PostgreSQL: half the index probes of such a search).
    count_from_matches = False
    # What ends a presence check's subquery (_checks) that must probe each title rather than
    # let the database read the group's whole lists into a hash table: PostgreSQL turns an
    # EXISTS into a hashed subplan at will (it read 88,000 postings of `sajo*` for 44 titles of
    # `lobarsil`, 90 ms), and OFFSET 0 keeps it a probe. SQLite always probes.
    probe_barrier = ""
    # The capped count (_count) of a search whose category/language filter leaves at most
    # FILTERED_SET_MAX titles reads the rarest group's postings of those titles (one index range
    # and a hash of the set) when the group has at most this many postings, rather than the
    # full-text count. PostgreSQL's GIN count fetched each match's row and its title to test the
    # filter (`ormo`, drama, fr: 24-72 ms at load 15); SQLite's FTS5 walk is cheaper (0: never).
    filtered_group_count_max = 0
    # Whether that count (from a set every match lies in) joins each title by a probe of its
    # key rather than leave the join to the planner (PostgreSQL's hashed a scan of `titles`).
    count_probes_titles = False
    # Whether the schema keeps each title's postings also as one row (``search_terms``: a JSON
    # object of word → impact, PostgreSQL's migration 6), in step with search_postings, and a
    # lookup probes a title there once whatever the words (_term_probes), where it probed the
    # primary key of search_postings once per title and word (_probes).
    search_terms = False
    # Whether the capped count of a search with a category/language filter of at most
    # FILTERED_SET_MAX titles probes those titles in turn when it expects cap + 1 matches within
    # a twentieth of the rarest group's postings (it stops there: _probes_to_cap), rather than read
    # that group's postings of the set (filtered_group_count_max: a range read whole, hashed and
    # made distinct before the first match counts); and, for a filter leaving more titles than
    # that, probes its first titles when they are expected to hold cap matches (the full-text
    # count when they do not). SQLite's alternative, FTS5's walk, stops at cap too, and was
    # measured cheaper than the probes.
    filtered_count_stops = False

    def __init__(self, config: CatalogueConfig, *, clock: Clock = SYSTEM_CLOCK,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.clock = clock
        self.rng = rng or random.Random()

    def _json_item(self, i: int, sql_type: str | None = None) -> str:
        """Element ``i`` of a row of :attr:`json_pair_rows` (cast to ``sql_type`` where needed)."""
        return f"json_extract(value, '$[{i}]')"

    # --- backend hooks ---------------------------------------------------------------------

    @abstractmethod
    def _tx(self, *, write: bool) -> AbstractContextManager[Tx]:
        """A transaction; ``write`` ones are serialised where the database needs it."""

    def transaction(self, *, write: bool) -> AbstractContextManager[Tx]:
        """A transaction on the catalogue's database, for the tables other modules keep there
        (the upload records, the cluster's secrets: :mod:`headwater.origin.upload.records`)."""
        return self._tx(write=write)

    def _match_rows(self, tx: Tx, groups: list[TermGroup], where: list[str], params: list[Any],
                    limit: int, offset: int) -> list[tuple]:
        """Ranked matches: rows of ``_HIT_COLS`` plus a score, best first (:meth:`_top_k`)."""
        ranked = self._top_k(tx, groups, where, params, offset + limit)[offset:offset + limit]
        if not ranked:
            return []
        found = {int(r[0]): r for r in tx.rows(f"SELECT {_HIT_COLS} FROM titles t WHERE t.id IN ({self.json_ints})",
                                                (json.dumps([i for i, _ in ranked]),))}
        return [(*found[i], score) for i, score in ranked if i in found]

    def _top_k(self, tx: Tx, groups: list[TermGroup], where: list[str], params: list[Any],
               k: int) -> list[tuple[int, float]]:
        """The best ``k`` (title id, score) for ``groups`` under the filters, best first
        (:mod:`.ranking`; docs/origin-catalogue.md). Each group's lists are the postings of its
        words (the word as typed and its corrections) and, for the last group (a prefix), of
        its completions (one prefix list, or each completion's own); the walk below reads them
        best impact first, so a query's cost follows k and how deep its best titles lie in
        those lists, not the number of titles it matches."""
        if not groups:
            return []
        exact = sorted({w for g in groups for w in g.alternatives})
        vocab = self._vocabulary(tx, exact)
        total = tx.memo["documents"]
        if total <= 0:
            return []
        cursors: list[ListCursor] = []
        # Per group: the weight of its exact words, and for a prefix group the weight shared by
        # its completions.
        weights: list[dict[str, float]] = []
        prefix_weight: list[float] = []
        # Per group, the most any title can score in it (for the walk's bound).
        peaks: list[float] = []
        # Per group, how many postings it has at most (the sum over its words).
        sizes: list[int] = []
        # Per walked word (not a prefix list), how many postings it has.
        docs_of: dict[str, int] = {}
        for gi, g in enumerate(groups):
            ws = {w: idf(vocab[w][0], total) for w in g.alternatives if w in vocab}
            sizes.append(sum(vocab[w][0] for w in ws))
            for w in ws:
                cursors.append(ListCursor(word=w, group=gi, weight=ws[w], frontier=vocab[w][1]))
                docs_of[w] = vocab[w][0]
            weights.append(ws)
            peak = max((ws[w] * vocab[w][1] for w in ws), default=0.0)
            wp = 0.0
            if g.prefix:
                term = g.alternatives[0]
                completions = self._completions(tx, term)
                completions = [c for c in completions if c[0] not in ws]
                sizes[gi] += sum(c[1] for c in completions)
                if completions:
                    # The IDF of the prefix as a whole (the word as typed counted in): never
                    # above the word's own, so a completion never outweighs the word typed.
                    wp = idf(sum(c[1] for c in completions) + vocab.get(term, (0, 0.0))[0], total)
                    peak = max(peak, wp * (max_impact() if len(completions) >= PREFIX_SCANNED
                                           else max(c[2] for c in completions)))
                    key = prefix_key(term)
                    if len(completions) <= PREFIX_WALKED or (len(term) > 3 and len(completions) <= PREFIX_OWN_LISTS):
                        # Few completions (a longer prefix): each one's own list (exact, where
                        # the 3-letter list past three letters is a superset to filter).
                        for w, n, top_impact in completions:
                            cursors.append(ListCursor(word=w, group=gi, weight=wp, frontier=top_impact))
                            docs_of[w] = n
                    elif key is not None:
                        # Many: one walk of the prefix's list finds every completion (past
                        # three letters a superset: the lookups keep the completions).
                        cursors.append(ListCursor(word=key, group=gi, weight=wp,
                                                  frontier=max(c[2] for c in completions)))
                    else:
                        # A one-letter prefix: its most frequent completions are walked, the
                        # others only looked up (a lone one-letter query ranks the walked ones).
                        completions.sort(key=lambda c: (-c[1], c[0]))
                        for w, _, top_impact in completions[:PREFIX_WALKED]:
                            cursors.append(ListCursor(word=w, group=gi, weight=wp, frontier=top_impact))
            prefix_weight.append(wp)
            peaks.append(peak)
        if not cursors:
            return []
        filters = [w for w in where if w != "t.state = 'published'"]
        join = f" {self.postings_join} ON t.id = p.title_id" if filters else ""
        cond = "".join(f" AND {w}" for w in filters)
        fparams = params if filters else []
        # How the walk tells which postings pass the filters: it reads a batch of a list in
        # index order (the inner LIMIT, so the database cannot choose to read the whole list
        # and sort it) and marks each posting, joining its title's filter columns or probing
        # the set of titles that pass.
        passes, passes_args = ("t.id IS NOT NULL", []) if filters else ("true", [])
        outer = f" LEFT JOIN {self.titles_filters} ON t.id = p.title_id{cond}" if filters else ""
        by_size = sorted(range(len(groups)), key=lambda gi: sizes[gi])
        # What the capped count (_count) reuses: the groups' words and weights, and their sizes.
        tx.memo["plan"] = (groups, weights, prefix_weight, sizes, by_size)
        # How many postings each list a lookup may read holds (a prefix's list: at most its
        # completions' postings), to choose how the lookups read them (_lookup_select).
        lengths: dict[str, int] = {w: vocab[w][0] for w in vocab}
        for gi, g in enumerate(groups):
            key = prefix_key(g.alternatives[0]) if g.prefix else None
            if key is not None:
                lengths[key] = sizes[gi] - sum(vocab[w][0] for w in weights[gi])
        tx.memo["lengths"] = lengths
        # Where every group's matches are a list of words (its words, and a 2-3-letter prefix's
        # own prefix list), a title is scored from its postings of those words, read in one
        # statement (a primary-key probe per title and word) and summed here: cheaper than the
        # database's per-title subqueries (_scored), which a longer prefix's range still needs.
        lookup: dict[str, list[tuple[int, float]]] | None = {} if self.score_by_lookup else None
        for gi, g in enumerate(groups if lookup is not None else ()):
            for w, v in weights[gi].items():
                lookup.setdefault(w, []).append((gi, v))
            if g.prefix and prefix_weight[gi] > 0:
                key = prefix_key(g.alternatives[0])
                if key is None or len(g.alternatives[0]) > PREFIX_LENGTHS[-1] or len(g.alternatives) > 1:
                    lookup = None
                    break
                lookup.setdefault(key, []).append((gi, prefix_weight[gi]))

        if any(w.startswith(("t.category", "t.language")) for w in filters):
            # A category or language filter that leaves few titles (read from their indexes,
            # titles_browse_*): those titles are scored outright, or the walk probes them as a
            # set instead of joining each posting to its title (a common word with a rare
            # category and language otherwise joined most of its list).
            few = self._filtered_titles(tx, where, params)
            if len(few) <= INTERSECT_MAX:
                return self._scored_top(tx, groups, weights, prefix_weight, few, k, where, params,
                                        order=by_size, lookup=lookup) if few else []
            if len(few) <= FILTERED_SET_MAX:
                join, cond, fparams = "", f" AND +p.title_id IN ({self.json_ints})", [json.dumps(few)]
                passes, passes_args, outer = f"p.title_id IN ({self.json_ints})", [json.dumps(few)], ""
        rarest = by_size[0]
        if len(groups) > 1 and sizes[rarest] <= INTERSECT_MAX:
            # One group has few postings: every match is among its titles, all scored in one
            # statement (exact, and cheaper than walking).
            return self._scored_top(tx, groups, weights, prefix_weight, self._group_titles(
                groups, weights, prefix_weight, rarest, join, cond, fparams), k, where, params, held=rarest,
                order=by_size, lookup=lookup, titles=sizes[rarest])
        # The walk (Fagin's threshold algorithm): every group's lists (its words' postings, best
        # impact first); the list whose next posting could score the most is read next, in
        # batches that double per list. Each batch's new titles are scored by the database
        # (every group looked up by primary key; a title missing a group drops out), but those
        # whose bound is already below the k-th score: what the read says of a title (its
        # weighted impact in the list read) plus what the other groups' lists can still hold.
        # It stops once the k-th score is above what an unread title could reach (the sum over
        # groups of the best their lists can still hold), when a group's lists are all read
        # (every match has been seen), or after MAX_WALK + 2k postings: then the page is the
        # best of the titles read, those whose words score highest in some list.
        # A one-letter prefix's unwalked completions are bounded by the group's peak.
        partial = [len(g.alternatives[0]) < 2 and g.prefix and prefix_weight[gi] > 0 and
                   sum(1 for c in cursors if c.group == gi) >= PREFIX_WALKED for gi, g in enumerate(groups)]
        top = TopK(k=k)
        single = len(groups) == 1 and not any(
            c.word.startswith("*") and len(groups[0].alternatives[0]) > 3 for c in cursors)
        best: dict[int, float] = {}
        seen: set[int] = set()
        # The titles seen, by the list whose read saw them first: a list holds a title once, so
        # its next batch can only hold titles seen in the other lists, and a step's SQL need not
        # be sent the rest (_read_and_looked_up: the JSON of a long walk's 2,000 titles parsed
        # per step).
        seen_in: dict[str, set[int]] = {}
        walked = 0
        n_groups = len(groups)
        for c in cursors:
            c.batch = max(32, k + 1)
        # A group's small lists (a corrected word's, a longer prefix's few completions: some 40
        # lists of a few postings each beside a common word) are read whole in one statement up
        # front and walked as one list of weighted impacts, best first (each title once, at its
        # best): one read and one lookup statement per list cost ~0.3 ms each, the postings
        # themselves a fraction of that.
        merged: dict[int, list[tuple[int, float, int]]] = {}
        for gi in range(n_groups):
            small = sorted((c for c in cursors if c.group == gi and not partial[gi]
                            and docs_of.get(c.word, SMALL_LIST + 1) <= SMALL_LIST),
                           key=lambda c: docs_of[c.word])
            taken, held = [], 0
            for c in small:
                if held + docs_of[c.word] > MERGED_MAX:
                    break
                taken.append(c)
                held += docs_of[c.word]
            if len(taken) < 2:
                continue
            cursors = [c for c in cursors if c not in taken]
            merged[gi] = self._read_lists(tx, taken, join, cond, fparams, passes, passes_args, outer)
            cursors.append(ListCursor(word=_MERGED, group=gi, weight=1.0, exhausted=not merged[gi],
                                      frontier=merged[gi][0][1] if merged[gi] else 0.0, batch=max(32, k + 1)))

        def bound(gi: int) -> float:
            best = max((c.weight * c.frontier for c in cursors if c.group == gi), default=0.0)
            return max(best, peaks[gi]) if partial[gi] and n_groups > 1 else best

        # Per group, its one list when the group's score of a title is that list's weighted
        # impact (one list of exactly its titles: not a prefix's 3-letter superset list): a title
        # read there needs no lookup of that group.
        sole: list[str | None] = []
        for gi, g in enumerate(groups):
            own = [x for x in cursors if x.group == gi]
            sole.append(own[0].word if len(own) == 1 and (
                not own[0].word.startswith("*") or len(g.alternatives[0]) <= PREFIX_LENGTHS[-1]) else None)
        while True:
            live = [c for c in cursors if not c.exhausted]
            if not live:
                break
            c = max(live, key=lambda c: c.weight * c.frontier)
            if c.flat and n_groups > 1:
                # The list whose next posting could score the most (TA's pick) stands on a
                # plateau of equal impacts (a word alone in every 2-word title's title field):
                # its frontier, and so the walk's bound, may not move for thousands of postings,
                # while another group's list falls in a few dozen; that group is read first, then
                # this list again (its batch doubled), so neither waits on the other.
                others = [x for x in live if x.group != c.group]
                if others:
                    c.flat = False
                    c = max(others, key=lambda c: c.weight * c.frontier)
            batch = c.batch
            c.batch *= 2
            after, aparams = "", []
            if c.after is not None:
                after, aparams = " AND (impact, title_id) < (?, ?)", list(c.after)
            known = c.group if sole[c.group] == c.word else None
            looked: list[tuple] | None = None
            batch_sql = (f"SELECT p.title_id, p.impact, {passes} AS ok FROM (SELECT title_id, impact FROM search_postings "
                         f"WHERE word = ?{after} ORDER BY impact DESC, title_id DESC LIMIT ?) p{outer}")
            batch_args = (*passes_args, c.word, *aparams, batch, *(fparams if outer else []))
            if c.word == _MERGED:
                # A group's small lists, read up front (above): their weighted impacts.
                read = merged[c.group][:batch]
                merged[c.group] = merged[c.group][batch:]
            elif self.walk_joins_in_order:
                # SQLite's planner keeps the postings' order through the join: only passing
                # postings come back, and the batch counts those.
                read = tx.rows(f"SELECT p.title_id, p.impact, 1 FROM search_postings p{join} WHERE p.word = ?"
                               f"{after.replace('(impact, title_id)', '(p.impact, p.title_id)')}{cond} "
                               "ORDER BY p.impact DESC, p.title_id DESC LIMIT ?", (c.word, *aparams, *fparams, batch))
            elif lookup is not None and not single and any(gi != known for gs in lookup.values() for gi, _ in gs):
                # The read and the lookups of its new titles in one statement (one round trip a
                # step, where a step was two): the titles looked up are those the bound test
                # below keeps, tested in SQL as loosely as rounding needs (what the other lists
                # still hold is known before the read; the list read bounds its own titles by
                # their impact), and only the ones kept here are scored.
                kth = top.kth()
                rest = max((x.weight * x.frontier for x in cursors if x.group == c.group and x is not c), default=0.0)
                if partial[c.group] and n_groups > 1:
                    rest = max(rest, peaks[c.group])
                beyond = sum(bound(gi) for gi in range(n_groups) if gi != c.group)
                floor = -1.0 if kth is None else kth - _EPSILON - _LOOSE
                read, looked = self._read_and_looked_up(tx, batch_sql, batch_args, lookup, known,
                                                        (c.weight, rest, beyond, floor),
                                                        [t for w, ts in seen_in.items() if w != c.word for t in ts], batch)
            else:
                read = tx.rows(f"{batch_sql} ORDER BY p.impact DESC, p.title_id DESC", batch_args)
            if c.word != _MERGED:
                walked += len(read)
            before = c.frontier
            if len(read) < batch:
                c.exhausted, c.frontier = True, 0.0
            if read:
                c.after = (float(read[-1][1]), int(read[-1][0]))
                if not c.exhausted:
                    c.frontier = float(read[-1][1])
            if c.word == _MERGED:
                c.exhausted = not merged[c.group]
                c.frontier = merged[c.group][0][1] if merged[c.group] else 0.0
            c.flat = c.frontier == before
            if single:
                # One group whose lists each hold exactly its titles: a title's score is the best
                # of its postings, so no lookup is needed. A title's best read so far is its score
                # once it is above every list's bound, and a title not read that high cannot
                # reach the k-th (the k-th best read exceeds the bound when the walk stops).
                weight = c.weight
                for tid, impact, ok in read:
                    if ok:
                        v = weight * impact
                        if v > best.get(int(tid), -1.0):
                            best[int(tid)] = v
                # The k-th best is above the bound when k titles are: counted, where taking the
                # k largest each batch cost ~0.5 ms a batch at k = 1,000 (a deep page).
                above = bound(0)
                if len(best) >= k and sum(1 for v in best.values() if v > above) >= k or walked >= MAX_WALK + 2 * k:
                    break
                continue
            bounds = [bound(gi) for gi in range(n_groups)]
            kth = top.kth()
            # A new title's bound: its group's score is at most the larger of the impact read
            # (a prefix past three letters: the best of its 3-letter list, also an upper bound)
            # and what that group's other lists still hold; each other group's, what its lists
            # still hold (the title is in none of what they have read).
            others = sum(bounds) - bounds[c.group]
            floor = -1.0 if kth is None else kth - _EPSILON
            fresh: dict[int, float] = {}
            weight, own = c.weight, bounds[c.group]
            first = seen_in.setdefault(c.word, set())
            for tid, impact, ok in read:
                if ok and tid not in seen:
                    seen.add(tid)
                    first.add(tid)
                    v = weight * float(impact)
                    if (v if v > own else own) + others >= floor:
                        fresh[int(tid)] = v
            if fresh:
                if looked is not None:
                    found = _summed(looked, [w for w, gs in lookup.items() if any(gi != known for gi, _ in gs)],  # type: ignore[union-attr]
                                    lookup, n_groups, fresh, known)  # type: ignore[arg-type]
                elif lookup is not None:
                    found = self._looked_up(tx, lookup, n_groups, fresh, known)
                elif known is not None and all(2 * sizes[gi] >= total for gi in range(n_groups) if gi != known):
                    # The other words are in most titles: score each title at once.
                    found = self._walk_scored(tx, groups, weights, prefix_weight, fresh, known)
                else:
                    # A rarer word: most titles lack it, and a presence check (which stops at the
                    # first word missing) is cheaper than a score (an aggregate) for those.
                    # A superset list (a prefix past three letters) holds titles its group lacks.
                    exact_list = not c.word.startswith("*") or len(groups[c.group].alternatives[0]) <= 3
                    found = self._scored(tx, groups, weights, prefix_weight, list(fresh), None,
                                         held=c.group if exact_list else None, order=by_size)
                for tid, score in found:
                    top.offer(tid, score)
            kth = top.kth()
            if min(bounds) <= 0.0 or (kth is not None and kth - _EPSILON > sum(bounds)) or walked >= MAX_WALK + 2 * k:
                break
        if single:
            # The page from the titles at or above the k-th (not a sort of every title read).
            kth = heapq.nlargest(k, best.values())[-1] if len(best) > k else -1.0
            return sorted(((t, v) for t, v in best.items() if v >= kth), key=lambda kv: (-kv[1], -kv[0]))[:k]
        return top.page()

    def _read_lists(self, tx: Tx, lists: list[ListCursor], join: str, cond: str, fparams: list[Any],
                    passes: str, passes_args: list[Any], outer: str) -> list[tuple[int, float, int]]:
        """The postings of the whole ``lists`` that pass the filters, in one statement: (title id,
        its best weighted impact among them, 1), best first (ties newest first), each title once."""
        weight = {c.word: c.weight for c in lists}
        words = sorted(weight)
        if self.walk_joins_in_order:
            rows = tx.rows(f"SELECT p.title_id, p.impact, 1, p.word FROM search_postings p{join} "
                           f"WHERE p.word IN ({_marks(len(words))}){cond}", (*words, *fparams))
        else:
            if outer:
                # Each posting's title probed by its key (a subquery the planner cannot flatten):
                # left to itself PostgreSQL hashed every title of the filter's category and
                # language, a scan of the table, for 259 postings of `anmo*` (67 ms).
                outer = (f" LEFT JOIN LATERAL (SELECT t.id FROM {self.titles_filters} WHERE t.id = p.title_id{cond} "
                         "OFFSET 0) t ON true")
            rows = tx.rows(f"SELECT p.title_id, p.impact, {passes}, p.word FROM (SELECT title_id, impact, word "
                           f"FROM search_postings WHERE word IN ({_marks(len(words))})) p{outer}",
                           (*passes_args, *words, *(fparams if outer else [])))
        found: dict[int, float] = {}
        for tid, impact, ok, word in rows:
            if ok:
                v = weight[word] * float(impact)
                if v > found.get(int(tid), -1.0):
                    found[int(tid)] = v
        return [(tid, v, 1) for tid, v in sorted(found.items(), key=lambda kv: (-kv[1], -kv[0]))]

    def _vocabulary(self, tx: Tx, words: list[str]) -> dict[str, tuple[int, float]]:
        """The words of ``words`` the vocabulary holds, each with its document count and highest
        impact. The first call of a search reads, in the same statement, the document count
        (``tx.memo["documents"]``) and the last word's completions (:meth:`_completions`): one
        round trip where there were three."""
        memo = tx.memo.get("vocabulary")
        if memo is None:
            last = words[-1]
            rows = tx.rows(
                f"SELECT 0, word, docs, max_impact FROM search_words WHERE word IN ({_marks(len(words))}) "
                "UNION ALL SELECT 1, NULL, value, 0 FROM search_stats WHERE name = 'documents' "
                "UNION ALL SELECT 2, word, docs, max_impact FROM (SELECT word, docs, max_impact FROM search_words "
                "WHERE word > ? AND word < ? LIMIT ?) c",
                (*words, last, last + _TOP_CHAR, PREFIX_SCANNED))
            memo = tx.memo["vocabulary"] = ({w: None for w in words}, {})
            tx.memo["documents"] = 0
            for kind, word, docs, peak in rows:
                if kind == 0:
                    memo[0][word] = (int(docs), float(peak))
                elif kind == 1:
                    tx.memo["documents"] = int(docs)
                else:
                    memo[1].setdefault(last, []).append((word, int(docs), float(peak)))
            memo[1].setdefault(last, [])
        held, _ = memo
        missing = [w for w in words if w not in held]
        if missing:
            for r in tx.rows(f"SELECT word, docs, max_impact FROM search_words WHERE word IN ({_marks(len(missing))})",
                             missing):
                held[r[0]] = (int(r[1]), float(r[2]))
            for w in missing:
                held.setdefault(w, None)
        return {w: held[w] for w in words if held[w] is not None}

    def _completions(self, tx: Tx, term: str) -> list[tuple[str, int, float]]:
        """The vocabulary's words that extend ``term`` (up to PREFIX_SCANNED, in word order), each
        with its document count and highest impact."""
        memo = tx.memo.get("vocabulary")
        if memo is not None and term in memo[1]:
            return list(memo[1][term])
        return [(r[0], int(r[1]), float(r[2])) for r in tx.rows(
            "SELECT word, docs, max_impact FROM search_words WHERE word > ? AND word < ? LIMIT ?",
            (term, term + _TOP_CHAR, PREFIX_SCANNED))]

    def _looked_up(self, tx: Tx, lookup: dict[str, list[tuple[int, float]]], n_groups: int,
                   ids: list[int] | dict[int, float] | tuple[str, list[Any]],
                   known: int | None = None, *, titles: int | None = None) -> list[tuple[int, float]]:
        """(title id, score) of the titles ``ids`` holding every group, from their postings of
        the words in ``lookup`` (word → its groups and weights): a group scores its best weighted
        impact, the score is the groups' sum (in group order, as :meth:`_scored` adds them).
        With ``known``, ``ids`` maps each title to its score in that group (the list the walk
        read), whose words are not looked up; ``titles`` is how many titles a subquery ``ids``
        holds at most."""
        words = [w for w, gs in lookup.items() if any(gi != known for gi, _ in gs)]
        if not words:
            # Every other group has no word: only a lone group's titles can match.
            return list(ids.items()) if n_groups == 1 and isinstance(ids, dict) else []
        source, sargs = ids if isinstance(ids, tuple) else (self.json_ints, [json.dumps(list(ids))])
        select, args = self._lookup_select(tx, words, titles if isinstance(ids, tuple) and titles else len(ids),
                                           source, sargs)
        return _summed(tx.rows(select, args), words, lookup, n_groups, ids if isinstance(ids, dict) else [], known)

    def _lookup_select(self, tx: Tx, words: list[str], titles: int, source: str,
                       sargs: Sequence[Any]) -> tuple[str, list[Any]]:
        """How a lookup reads the postings of ``words`` of some ``titles`` titles (the subquery
        ``source``, whose parameters are ``sargs``): a select of ``title_id, word, impact,
        impacts`` (:func:`_summed` reads its rows), and its parameters. One probe of
        ``search_terms`` per title, the words' impacts in one array (:func:`_term_probes`,
        :attr:`search_terms`), or one index-only probe of the postings' primary key per title
        and word (:func:`_probes`), or, when the words' lists hold fewer than
        LOOKUP_SCAN_RATIO postings per title, those lists read whole (the impact index) and
        joined to the titles by hash (a probe touches some three pages, a posting of a list
        read a fiftieth of one: `lotor`'s 15,739 postings for 2,000 titles, 284 pages against
        6,054). Chosen here from the words' document counts, not left to the planner, whose
        estimate of a subquery's titles is a guess: given a walk's batch it read `vor`'s 81,344
        postings for 1,000 titles (65 ms where the probes take 15)."""
        lengths = tx.memo.get("lengths", {})
        listed = sum(lengths.get(w, 1 << 40) for w in words)
        narrow = "SELECT q.title_id, q.word, q.impact, NULL::double precision[] AS impacts FROM "
        if listed < LOOKUP_SCAN_RATIO * titles:
            return (f"{narrow}(SELECT title_id, word, impact FROM search_postings WHERE word IN ({_marks(len(words))}) "
                    f"OFFSET 0) q WHERE q.title_id IN ({source})", [*words, *sargs])
        if self.search_terms:
            return _term_probes(len(words), source), [*words, *sargs, words]
        return narrow + _probes(len(words), source), [*sargs, *words]

    def _read_and_looked_up(self, tx: Tx, batch_sql: str, batch_args: Sequence[Any],
                            lookup: dict[str, list[tuple[int, float]]], known: int | None,
                            test: tuple[float, float, float, float], seen: Collection[int],
                            batch: int) -> tuple[list[tuple], list[tuple]]:
        """One step of the walk in one statement: the batch ``batch_sql`` reads (rows of title,
        impact, passes; best first) and the postings of the words in ``lookup`` (but group
        ``known``'s) of its titles that pass, are not in ``seen`` (the titles seen in the other
        lists: those seen in this one cannot come again) and whose bound ``greatest(weight
        × impact, rest) + beyond`` reaches ``floor`` (``test``) (rows for :func:`_summed`)."""
        words = [w for w, gs in lookup.items() if any(gi != known for gi, _ in gs)]
        unseen, uargs = (f" AND title_id NOT IN ({self.json_ints})", [json.dumps(list(seen))]) if seen else ("", [])
        kept = f"SELECT title_id FROM r WHERE ok AND {self.greatest}(? * impact, ?) + ? >= ?{unseen}"
        # The batch's size bounds the titles looked up.
        select, args = self._lookup_select(tx, words, batch, kept, [*test, *uargs])
        rows = tx.rows(
            f"WITH r AS MATERIALIZED ({batch_sql}) "
            "SELECT 0 AS part, r.title_id, r.impact, r.ok, NULL AS word, NULL::double precision[] AS impacts FROM r "
            f"UNION ALL SELECT 1, q.title_id, q.impact, true, q.word, q.impacts FROM ({select}) q "
            "ORDER BY part, impact DESC, title_id DESC", (*batch_args, *args))
        read = [(r[1], r[2], r[3]) for r in rows if r[0] == 0]
        return read, [(r[1], r[4], r[2], r[5]) for r in rows if r[0] == 1]

    def _filtered_titles(self, tx: Tx, where: list[str], params: list[Any]) -> list[int]:
        """The titles passing the filters, up to FILTERED_SET_MAX + 1 (read once per search)."""
        key = (tuple(where), tuple(params))
        memo = tx.memo.get("filtered")
        if memo is None or memo[0] != key:
            found = [int(r[0]) for r in tx.rows(f"SELECT t.id FROM titles t WHERE {' AND '.join(where)} LIMIT ?",
                                                (*params, FILTERED_SET_MAX + 1))]
            memo = tx.memo["filtered"] = (key, found)
        return memo[1]

    def _alternative_parts(self, groups: list[TermGroup], weights: list[dict[str, float]],
                           prefix_weight: list[float], gi: int, col: str) -> list[tuple[str, list[Any]]]:
        """SQL conditions, one per index range, that together match group ``gi``'s words in
        column ``col`` (its words; its prefix's range)."""
        words = sorted(weights[gi])
        term = groups[gi].alternatives[0]
        if groups[gi].prefix and prefix_weight[gi] > 0 and all(term <= w < term + _TOP_CHAR for w in words):
            # One range (the word typed and its completions): an OR of the word and the range
            # is a MULTI-INDEX OR in SQLite, which looks every row up again by primary key.
            return [(f"({col} >= ? AND {col} < ?)", [term, term + _TOP_CHAR])]
        parts: list[tuple[str, list[Any]]] = [(f"{col} IN ({_marks(len(words))})", list(words))] if words else []
        if groups[gi].prefix and prefix_weight[gi] > 0:
            parts.append((f"({col} > ? AND {col} < ?)", [term, term + _TOP_CHAR]))
        return parts

    def _alternatives(self, groups: list[TermGroup], weights: list[dict[str, float]], prefix_weight: list[float],
                      gi: int, col: str) -> tuple[str, list[Any]]:
        """SQL matching group ``gi``'s words in column ``col`` (its words; its prefix's range)."""
        parts = self._alternative_parts(groups, weights, prefix_weight, gi, col)
        return " OR ".join(p for p, _ in parts) or "false", [a for _, args in parts for a in args]

    def _group_titles(self, groups: list[TermGroup], weights: list[dict[str, float]], prefix_weight: list[float],
                      gi: int, join: str, cond: str, fparams: list[Any]) -> tuple[str, list[Any]]:
        """A subquery (and its parameters) of the titles holding group ``gi`` that pass the
        filters: a UNION of one select per index range (a corrected word beside a prefix's
        completions as an OR was a MULTI-INDEX OR in SQLite, every row looked up again by
        primary key: 15 ms for 2,900 postings, against 2 ms for the UNION)."""
        parts = self._alternative_parts(groups, weights, prefix_weight, gi, "p.word") or [("false", [])]
        distinct = " DISTINCT" if len(parts) == 1 else ""  # (UNION drops the repeats itself)
        return (" UNION ".join(f"SELECT{distinct} p.title_id AS id FROM search_postings p{join} WHERE {m}{cond}"
                               for m, _ in parts),
                [a for _, args in parts for a in [*args, *fparams]])

    def _scored_top(self, tx: Tx, groups: list[TermGroup], weights: list[dict[str, float]],
                    prefix_weight: list[float], ids: list[int] | tuple[str, list[Any]], k: int, where: list[str],
                    params: list[Any], *, held: int | None = None, order: list[int] | None = None,
                    lookup: dict[str, list[tuple[int, float]]] | None = None,
                    titles: int | None = None) -> list[tuple[int, float]]:
        """The best ``k`` of :meth:`_scored` over ``ids``, which hold every match. With
        :attr:`count_from_matches`, every match is read and kept (``tx.memo["matches"]``) for the
        capped count (:meth:`_count`), which then need not check each title for every group
        again; with ``lookup`` (:meth:`_top_k`), the titles are scored from their postings of
        its words (:meth:`_looked_up`: one index-only probe per title and word, summed here)
        instead of the database's per-title subqueries."""
        if not self.count_from_matches:
            return self._scored(tx, groups, weights, prefix_weight, ids, k, held=held, order=order, titles=titles)
        if lookup is not None:
            found = self._looked_up(tx, lookup, len(groups), ids, titles=titles)
        else:
            found = self._scored(tx, groups, weights, prefix_weight, ids, None, held=held, order=order,
                                 titles=titles)
        tx.memo["matches"] = ((groups, tuple(where), tuple(params)), [tid for tid, _ in found])
        # As the SQL orders them: best score first, ties newest (highest id) first.
        return sorted(found, key=lambda r: (-r[1], -r[0]))[:k]

    def _scored(self, tx: Tx, groups: list[TermGroup], weights: list[dict[str, float]], prefix_weight: list[float],
                ids: list[int] | tuple[str, list[Any]], k: int | None, *, held: int | None = None,
                order: list[int] | None = None, titles: int | None = None) -> list[tuple[int, float]]:
        """(title id, score) of the titles ``ids`` (a list, or a subquery and its parameters)
        that match every group, scored by the database; with ``k``, the best k, best first.

        Each title is first checked for the groups (but ``held``, which every title of ``ids``
        has) in ``order`` (rarest first), one primary-key probe each, stopping at the first
        missing; only the titles that match are scored (one more probe per group). ``titles``:
        how many ``ids`` holds, when a subquery (:meth:`_checks` chooses probes by it)."""
        checks, kargs = self._checks(groups, weights, prefix_weight, held, order, self._probed(
            tx, groups, len(ids) if isinstance(ids, list) else titles))
        if checks is None:
            return []
        cols, cargs = [], []
        for gi in range(len(groups)):
            match, args = self._alternatives(groups, weights, prefix_weight, gi, "q.word")
            ws = sorted(weights[gi].items())
            # The word's own weight; a completion of the prefix gets the prefix's.
            weight = ("CASE q.word" + " WHEN ? THEN ?" * len(ws) + " ELSE ? END") if ws else "?"
            cols.append(f"coalesce((SELECT max(({weight}) * q.impact) FROM search_postings q{self.postings_by_title} "
                        f"WHERE q.title_id = d.id AND ({match})), 0)")
            cargs += [x for pair in ws for x in pair] + [prefix_weight[gi]] + args
        if isinstance(ids, tuple):
            source, sargs = ids
        else:
            source, sargs = f"SELECT value AS id FROM ({self.json_ints}) x", [json.dumps(ids)]
        where = f" WHERE {checks}" if checks else ""
        tail = " ORDER BY score DESC, id DESC LIMIT ?" if k is not None else ""
        return [(int(r[0]), float(r[1])) for r in tx.rows(
            f"SELECT d.id, {' + '.join(cols)} AS score FROM ({source}) d{where}{tail}",
            (*cargs, *sargs, *kargs, *([k] if k is not None else [])))]

    def _walk_scored(self, tx: Tx, groups: list[TermGroup], weights: list[dict[str, float]],
                     prefix_weight: list[float], fresh: dict[int, float], known: int | None) -> list[tuple[int, float]]:
        """(title id, score) of the titles ``fresh`` (title → its weighted impact in the list
        read) that match every group, for the walk: one primary-key probe per title and index
        range of each group (but group ``known``, whose score is that weighted impact), each the
        range's best weighted impact or NULL; a title with only NULLs in a group drops out. Summed
        here in group order, as :meth:`_scored`'s SQL adds them. (The walk used :meth:`_scored`,
        which checks every group's presence first and then scores each: twice the probes for
        the titles that match, and the walk's lookups were most of a long walk's time.)"""
        # One column per index range of each group (its words; its prefix's range): a probe of
        # the primary key each. One subquery over "words OR range" made SQLite read every
        # posting of the title instead (20 µs a title, against 1-2 per probe).
        cols, cargs, spans = [], [], []
        for gi in range(len(groups)):
            if gi == known:
                spans.append(0)
                continue
            parts = self._alternative_parts(groups, weights, prefix_weight, gi, "q.word")
            if not parts:
                return []
            ws = sorted(weights[gi].items())
            weight = ("CASE q.word" + " WHEN ? THEN ?" * len(ws) + " ELSE ? END") if ws else "?"
            for match, args in parts:
                cols.append(f"(SELECT max(({weight}) * q.impact) FROM search_postings q{self.postings_by_title} "
                            f"WHERE q.title_id = d.id AND {match})")
                cargs += [x for pair in ws for x in pair] + [prefix_weight[gi]] + args
            spans.append(len(parts))
        if not cols:
            return list(fresh.items())
        rows = tx.rows(f"SELECT d.id, {', '.join(cols)} FROM (SELECT value AS id FROM ({self.json_ints}) x) d",
                       (*cargs, json.dumps(list(fresh))))
        if len(spans) == 2 and known is not None and spans[1 - known] == 1:
            # The common case (two words, one the list read: a long walk's 2,000 titles), without
            # the general loop's per-title lists (a third of such a walk's CPU). The sum is the
            # loop's: a float addition of two terms does not depend on their order.
            return [(int(tid), fresh[int(tid)] + float(v)) for tid, v in rows if v is not None]
        out = []
        for r in rows:
            tid = int(r[0])
            score, i = 0.0, 1
            for gi, n in enumerate(spans):
                if gi == known:
                    score += fresh[tid]
                    continue
                found = [float(v) for v in r[i:i + n] if v is not None]
                i += n
                if not found:
                    break
                score += max(found)
            else:
                out.append((tid, score))
        return out

    def _probed(self, tx: Tx, groups: list[TermGroup], titles: int | None) -> set[int]:
        """The groups whose presence checks (:meth:`_checks`) of ``titles`` titles must probe
        each title: those whose lists hold at least LOOKUP_SCAN_RATIO postings a title (the
        ranking's plan), as :meth:`_lookup_select` chooses."""
        plan = tx.memo.get("plan")
        if not self.probe_barrier or titles is None or plan is None or plan[0] != groups:
            return set()
        return {gi for gi, size in enumerate(plan[3]) if size >= LOOKUP_SCAN_RATIO * titles}

    def _checks(self, groups: list[TermGroup], weights: list[dict[str, float]], prefix_weight: list[float],
                held: int | None, order: list[int] | None,
                probed: Collection[int] = ()) -> tuple[str | None, list[Any]]:
        """SQL true for a title ``d.id`` holding every group but ``held`` (one primary-key probe
        per group, in ``order``: rarest first, so a title missing one stops at the first), and
        its parameters; ``None`` when a group can match nothing. The groups ``probed``
        (:meth:`_probed`) end their subqueries with :attr:`probe_barrier`."""
        checks, kargs = [], []
        for gi in (order or range(len(groups))):
            if gi == held:
                continue
            words = sorted(weights[gi])
            probes = []
            tail = self.probe_barrier if gi in probed else ""
            prefix = groups[gi].alternatives[0] if groups[gi].prefix and prefix_weight[gi] > 0 else None
            if prefix is not None and all(w.startswith(prefix) for w in words):
                # The word as typed and its completions: one index range, one probe (a title
                # lacking the group was two, `linveldor sajor`: 795 of 1,441 titles).
                checks.append(f"EXISTS (SELECT 1 FROM search_postings q{self.postings_by_title} "
                              f"WHERE q.title_id = d.id AND q.word >= ? AND q.word < ?{tail})")
                kargs += [prefix, prefix + _TOP_CHAR]
                continue
            if words:
                probes.append(f"EXISTS (SELECT 1 FROM search_postings q{self.postings_by_title} "
                              f"WHERE q.title_id = d.id AND q.word IN ({_marks(len(words))}){tail})")
                kargs += words
            if groups[gi].prefix and prefix_weight[gi] > 0:
                probes.append(f"EXISTS (SELECT 1 FROM search_postings q{self.postings_by_title} "
                              f"WHERE q.title_id = d.id AND q.word > ? AND q.word < ?{tail})")
                kargs += [groups[gi].alternatives[0], groups[gi].alternatives[0] + _TOP_CHAR]
            if not probes:
                return None, []
            checks.append("(" + " OR ".join(probes) + ")")
        return " AND ".join(checks), kargs

    @abstractmethod
    def _count_matches(self, tx: Tx, groups: list[TermGroup], where: list[str], params: list[Any],
                       cap: int) -> list[tuple]:
        """(category, count) over the first ``cap`` matches (unordered: no ranking is needed)."""

    def _match(self, tx: Tx, groups: list[TermGroup], where: list[str], params: list[Any], limit: int,
               offset: int, cap: int | None) -> tuple[list[tuple], list[tuple] | None]:
        """The ranked page (:meth:`_match_rows`) and, with ``cap``, the (category, count) rows
        over the first ``cap`` matches (:meth:`_count_matches`); a backend may answer both from
        one walk of the index."""
        rows = self._match_rows(tx, groups, where, params, limit, offset)
        return rows, None if cap is None else self._count(tx, groups, where, params, cap)

    def _count(self, tx: Tx, groups: list[TermGroup], where: list[str], params: list[Any],
               cap: int) -> list[tuple]:
        """(category, count) over the first ``cap`` matches: from a small set every match lies
        in, when the ranking found one (titles passing a rare category/language filter, or the
        titles of a rare group), each title probed for the other groups in ``search_postings``;
        otherwise the backend's full-text index (:meth:`_count_matches`). The full-text count
        walks the doclists of every word and completion until it has ``cap`` matches: for a
        common word under a rare filter, or a long prefix beside a rare word (a merge of every
        completion's doclist), that was most of the list for a handful of matches."""
        matches = tx.memo.get("matches")
        if matches is not None and matches[0] == (groups, tuple(where), tuple(params)):
            # The ranking scored every match (_scored_top): counted from those (up to cap).
            if not matches[1]:
                return []
            return tx.rows(f"SELECT category, count(*) FROM (SELECT t.category AS category FROM titles t "
                           f"WHERE t.id IN ({self.json_ints}) AND {' AND '.join(where)} LIMIT ?) m GROUP BY category",
                           (json.dumps(matches[1]), *params, cap))
        plan = tx.memo.get("plan")
        if plan is not None and plan[0] == groups:
            _, weights, prefix_weight, sizes, by_size = plan
            source: tuple[str, list[Any]] | None = None
            held = None
            # Whether source is the first of the filter's titles only (then cap matches decide).
            sampled = False
            rarest = by_size[0]
            # The rarest group's titles: when it has at most cap (the count is then exact, as
            # the full-text one), or when it is a prefix past three letters beside other words
            # (the full-text index merges every completion's doclist before it intersects them)
            # with at most long_prefix_count_max. (Past cap either count, and its facets, is a
            # sample of the matches, not the same one.)
            long_prefix = groups[rarest].prefix and len(groups[rarest].alternatives[0]) > PREFIX_LENGTHS[-1]
            by_group = sizes[rarest] <= cap or (
                long_prefix and len(groups) > 1 and sizes[rarest] <= self.long_prefix_count_max)
            if any(w.startswith(("t.category", "t.language")) for w in where):
                few = self._filtered_titles(tx, where, params)
                # The filter's titles when far fewer than the rarest group's postings: a probe of
                # search_postings costs some ten times a doclist entry of the full-text walk
                # (which probes the same set, _count_matches).
                # Or, where the other way reads the group's postings of the set whole
                # (filtered_group_count_max), the set's titles when cap + 1 matches are expected
                # within a twentieth of the group's postings: the probes stop there (`sajor`,
                # drama, fr: 463 probes expected against 43,593 postings, 19.6 -> 14.5 ms of
                # server CPU; at a tenth, `rafen`, drama, ja, 1,356 against 14,895, 10.2 -> 12.4).
                if len(few) <= FILTERED_SET_MAX and (len(few) * 10 <= sizes[rarest] or (
                        self.filtered_count_stops and self._probes_to_cap(tx, sizes, cap) * 20 <= sizes[rarest])):
                    source = f"SELECT value AS id FROM ({self.json_ints}) x", [json.dumps(few)]
                elif (self.filtered_group_count_max and len(few) <= FILTERED_SET_MAX
                      and sizes[rarest] <= self.filtered_group_count_max):
                    # The rarest group's titles among the filter's, intersected in the postings'
                    # index (a range read and a hash of the set), then checked for the others.
                    held = rarest
                    source = self._group_titles(groups, weights, prefix_weight, rarest, "",
                                                f" AND +p.title_id IN ({self.json_ints})", [json.dumps(few)])
                elif self.filtered_count_stops and len(few) > FILTERED_SET_MAX:
                    # A filter leaving more titles than a set holds (`lotor`, comedy, en): where
                    # the groups are dense enough that the filter's first titles, probed in turn,
                    # are expected to give cap matches within half of them, those are counted: cap
                    # matches is all the count needs ("more than"). Fewer, and the full-text
                    # count below counts them all (the probes' cost lost, bounded by the sample).
                    expected = self._probes_to_cap(tx, sizes, cap)
                    if 2 * expected <= len(few):
                        few = few[:int(2 * expected) + 1]
                        source, sampled = (f"SELECT value AS id FROM ({self.json_ints}) x", [json.dumps(few)]), True
            titles = (min(len(few), sizes[rarest]) if held is not None else len(few)) if source is not None else None
            if source is None and by_group:
                held = rarest
                source = self._group_titles(groups, weights, prefix_weight, held, "", "", [])
                titles = sizes[rarest]
            if source is not None:
                checks, kargs = self._checks(groups, weights, prefix_weight, held, by_size,
                                             self._probed(tx, groups, titles))
                if checks is None:
                    return []
                if self.count_probes_titles:
                    # Each title probed by its key (a subquery the planner cannot flatten), its
                    # checks first: left to itself PostgreSQL hashed a scan of every title for
                    # the 161 postings of a typo's corrections (`loota`: 25 ms, 0.6 with probes).
                    rows = tx.rows(
                        f"SELECT category, count(*) FROM (SELECT t.category AS category FROM ({source[0]}) d "
                        f"CROSS JOIN LATERAL (SELECT t.category FROM titles t WHERE t.id = d.id AND "
                        f"{' AND '.join(where)} OFFSET 0) t{' WHERE ' + checks if checks else ''} LIMIT ?) m "
                        "GROUP BY category", (*source[1], *params, *kargs, cap))
                    if not sampled or sum(int(n) for _, n in rows) >= cap:
                        return rows
                    return self._count_matches(tx, groups, where, params, cap)
                cond = "".join(f" AND {w}" for w in [*([checks] if checks else []), *where])
                return tx.rows(f"SELECT category, count(*) FROM (SELECT t.category AS category FROM ({source[0]}) d "
                               f"{self.postings_join} ON t.id = d.id WHERE true{cond} LIMIT ?) m GROUP BY category",
                               (*source[1], *kargs, *params, cap))
        return self._count_matches(tx, groups, where, params, cap)

    def _probes_to_cap(self, tx: Tx, sizes: list[int], cap: int) -> float:
        """How many titles of a filter's set the capped count probes before it has ``cap + 1``
        matches, expected: the groups' document shares multiplied, as if independent (as
        PostgresCatalogue._dense)."""
        documents = tx.memo.get("documents") or 0
        share = 1.0
        for size in sizes:
            share *= min(1.0, size / documents) if documents > 0 else 0.0
        return (cap + 1) / share if share > 0 else float("inf")

    @abstractmethod
    def close(self) -> None:
        """Release the connections."""

    @property
    def database_available(self) -> bool:
        """Whether the database has answered since this process started (always, but for a
        PostgreSQL catalogue made while its server was down: postgres.py's schema gate)."""
        return True

    @property
    def database_breaker(self) -> Breaker | None:
        """Whether callers that have an answer of their own (the local search index, a kept
        publication) should skip the database now, as it failed within the breaker's interval
        (breaker.py); None for a database that cannot be away (SQLite's, in this process)."""
        return None

    def warm_search(self) -> None:
        """Prepare what searches use (PostgreSQL's local search index) before the first one."""

    def __enter__(self) -> SqlCatalogue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- titles ----------------------------------------------------------------------------

    def create_title(self, draft: TitleDraft) -> Title:
        """Store a new title in state ``uploaded``."""
        validate_draft(draft)
        now = self.clock.time()
        with self._tx(write=True) as tx:
            self._ensure_labels(tx, draft)
            row = tx.one(
                "INSERT INTO titles (title, description, category, year, language, duration_s, state, "
                "progress, upload, owner, created, updated) VALUES (?, ?, ?, ?, ?, ?, 'uploaded', 0, ?, ?, ?, ?) "
                "RETURNING id",
                (draft.title, draft.description, draft.category, draft.year, draft.language,
                 draft.duration_s, draft.upload, draft.owner, now, now))
            assert row is not None
            title_id = int(row[0])
            self._set_people(tx, title_id, draft.people)
            return self._load_title(tx, title_id)

    def create_title_once(self, draft: TitleDraft) -> tuple[Title, bool]:
        """The title made from ``draft.owner``'s ``draft.upload``: stored now in state ``uploaded``
        (``True``), or the one stored by an earlier call (``False``, its metadata as it is).

        A unique index on (owner, upload) makes this hold across origin hosts: of two racing
        inserts one does nothing (``ON CONFLICT DO NOTHING``) and then reads the other's row."""
        if draft.upload is None or draft.owner is None:
            raise InvalidTitle("a title made from an upload needs its upload and owner")
        validate_draft(draft)
        now = self.clock.time()
        with self._tx(write=True) as tx:
            row = tx.one("SELECT id FROM titles WHERE owner = ? AND upload = ?", (draft.owner, draft.upload))
            if row is not None:
                return self._load_title(tx, int(row[0])), False
            self._ensure_labels(tx, draft)
            row = tx.one(
                "INSERT INTO titles (title, description, category, year, language, duration_s, state, "
                "progress, upload, owner, created, updated) VALUES (?, ?, ?, ?, ?, ?, 'uploaded', 0, ?, ?, ?, ?) "
                "ON CONFLICT (owner, upload) WHERE upload IS NOT NULL DO NOTHING RETURNING id",
                (draft.title, draft.description, draft.category, draft.year, draft.language,
                 draft.duration_s, draft.upload, draft.owner, now, now))
            if row is None:  # another host's insert committed between our read and our write
                row = tx.one("SELECT id FROM titles WHERE owner = ? AND upload = ?", (draft.owner, draft.upload))
                assert row is not None
                return self._load_title(tx, int(row[0])), False
            title_id = int(row[0])
            self._set_people(tx, title_id, draft.people)
            return self._load_title(tx, title_id), True

    def import_titles(self, drafts: Iterable[TitleDraft], *, state: TitleState = TitleState.UPLOADED) -> list[int]:
        """Create many titles in one transaction (an operator's import of an existing catalogue),
        each moved through the state machine to ``state`` as :meth:`set_state` would."""
        path = {TitleState.UPLOADED: (), TitleState.PUBLISHED: (TitleState.TRANSCODING, TitleState.PACKAGED,
                                                                TitleState.PUBLISHED)}
        if state not in path:
            raise InvalidTitle("an import makes titles uploaded or published")
        drafts = list(drafts)
        for d in drafts:
            validate_draft(d)
        now = self.clock.time()
        ids = []
        # The vocabulary is counted once for the whole import, not once per title: a common word
        # is one upsert (and its deletions one batch) however many of the titles have it.
        vocabulary: dict[str, int] = {}
        peaks: dict[str, float] = {}
        # The same path set_state walks, checked step by step, written once (as the insert).
        steps = (TitleState.UPLOADED, *path[state])
        for a, b in zip(steps, steps[1:]):
            check_transition(a, b)
        published = bool(path[state])
        # People are written once for the whole import too (two statements): per title they
        # were three round trips per person, which on PostgreSQL was most of an import's time.
        cast: list[tuple[int, int, str, str]] = []
        with self._tx(write=True) as tx:
            labelled: set[tuple[str | None, str | None]] = set()
            for draft in drafts:
                if (draft.category, draft.language) not in labelled:
                    self._ensure_labels(tx, draft)
                    labelled.add((draft.category, draft.language))
                row = tx.one(
                    "INSERT INTO titles (title, description, category, year, language, duration_s, state, "
                    "progress, upload, owner, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "RETURNING id",
                    (draft.title, draft.description, draft.category, draft.year, draft.language,
                     draft.duration_s, state.value, 1 if published else 0, draft.upload, draft.owner, now, now))
                assert row is not None
                ids.append(int(row[0]))
                cast.extend((ids[-1], pos, p.role, p.name) for pos, p in enumerate(draft.people))
                if published:
                    # A new title has no search entry yet: index it straight from the draft.
                    found = self._index(tx, ids[-1], draft.title, (p.name for p in draft.people),
                                        draft.description, count=False)
                    for w, v in found.items():
                        vocabulary[w] = vocabulary.get(w, 0) + 1
                        peaks[w] = max(peaks.get(w, 0.0), v)
            if cast:
                tx.run(f"INSERT INTO people (name) SELECT value FROM {self.json_rows} WHERE true "
                       "ON CONFLICT (name) DO NOTHING", (json.dumps(sorted({c[3] for c in cast})),))
                tx.run("INSERT INTO title_people (title_id, position, person_id, role) "
                       f"SELECT {self._json_item(0, 'bigint')}, {self._json_item(1, 'integer')}, p.id, "
                       f"{self._json_item(2)} FROM {self.json_pair_rows} "
                       f"JOIN people p ON p.name = {self._json_item(3)}", (json.dumps(cast),))
            self._add_words(tx, vocabulary, peaks)
            if published:
                self._count_documents(tx, len(ids))
                self._search_changed(tx, ids)
        return ids

    def update_metadata(self, title_id: int, draft: TitleDraft) -> Title:
        """Replace a title's metadata (not its state); a published title's search entry follows."""
        validate_draft(draft)
        with self._tx(write=True) as tx:
            self._ensure_labels(tx, draft)
            n = tx.run("UPDATE titles SET title = ?, description = ?, category = ?, year = ?, language = ?, "
                       "duration_s = ?, updated = ? WHERE id = ?",
                       (draft.title, draft.description, draft.category, draft.year, draft.language,
                        draft.duration_s, self.clock.time(), title_id))
            if not n:
                raise TitleNotFound(f"no title {title_id}")
            self._set_people(tx, title_id, draft.people)
            self._reindex(tx, title_id)
            return self._load_title(tx, title_id)

    def get_title(self, title_id: int) -> Title:
        """The title, or :class:`TitleNotFound`."""
        with self._tx(write=False) as tx:
            return self._load_title(tx, title_id)

    def uses_upload(self, owner: str, upload: str) -> bool:
        """Whether a title was made from ``owner``'s ``upload`` (the unique (owner, upload)
        index answers it)."""
        with self._tx(write=False) as tx:
            return tx.one("SELECT 1 FROM titles WHERE owner = ? AND upload = ?", (owner, upload)) is not None

    def set_state(self, title_id: int, state: TitleState, *, progress: float | None = None,
                  error: str | None = None, renditions: Sequence[Rendition] | None = None) -> Title:
        """Move a title through the publish-state machine (:data:`~.records.TRANSITIONS`)."""
        with self._tx(write=True) as tx:
            self._move(tx, title_id, state, progress=progress, error=error, renditions=renditions)
            return self._load_title(tx, title_id)

    def retry_title(self, title_id: int, kind: str, *, payload: dict) -> tuple[Title, Job]:
        """Transcode a ``failed`` or ``withdrawn`` title again: in one transaction it moves to
        ``transcoding`` (progress 0, its error cleared) and a ``kind`` job is queued for it with
        ``payload``, under a new idempotency key ``<kind>:<id>:<upload>:retry:<updated>`` (the
        title's ``updated`` before the retry: the one failure or withdrawal it answers).

        :class:`IllegalTransition` if the title is in another state, or if a ``kind`` job of it
        is still queued or running (a withdrawn title's: two jobs would publish twice). The
        move is a compare-and-set on (state, updated), so of two racing retries one queues the
        job and the other is refused, on either backend."""
        with self._tx(write=True) as tx:
            row = tx.one("SELECT state, updated, upload FROM titles WHERE id = ?", (title_id,))
            if row is None:
                raise TitleNotFound(f"no title {title_id}")
            state, updated, upload = TitleState(row[0]), float(row[1]), row[2]
            if state not in (TitleState.FAILED, TitleState.WITHDRAWN):
                raise IllegalTransition(f"only a failed or withdrawn title can be retried: this one is {state.value}")
            # jobs_ready (state, run_at) bounds this to the live jobs, however long the queue's history.
            if tx.one("SELECT 1 FROM jobs WHERE state IN ('queued', 'leased') AND kind = ? AND title_id = ?",
                      (kind, title_id)) is not None:
                raise IllegalTransition("this title's transcode is still queued or running: retry once it has ended")
            check_transition(state, TitleState.TRANSCODING)
            now = self.clock.time()
            n = tx.run("UPDATE titles SET state = ?, progress = 0, error = NULL, updated = ? "
                       "WHERE id = ? AND state = ? AND updated = ?",
                       (TitleState.TRANSCODING.value, now, title_id, state.value, updated))
            if not n:
                raise IllegalTransition("the title changed meanwhile (another retry?): read it and try again")
            self._reindex(tx, title_id)
            key = f"{kind}:{title_id}:{upload}:retry:{updated!r}"
            body = json.dumps(payload, sort_keys=True)
            if len(body) > MAX_PAYLOAD_BYTES or len(key) > MAX_KEY_CHARS:
                raise BadQuery("job payload or key is too large")
            tx.run("INSERT INTO jobs (kind, title_id, key, payload, state, max_attempts, run_at, created, updated) "
                   "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                   (kind, title_id, key, body, self.config.job_max_attempts, now, now, now))
            job = tx.one(f"SELECT {_JOB_COLS} FROM jobs WHERE key = ?", (key,))
            assert job is not None
            return self._load_title(tx, title_id), _job(job)

    def list_titles(self, *, state: TitleState | None = None, owner: str | None = None,
                    after_id: int = 0, limit: int = 50) -> list[Title]:
        """Titles in id order after ``after_id`` (keyset paging for the creator and admin tools)."""
        if not 1 <= limit <= self.config.search.max_page_size:
            raise BadQuery(f"limit must be within 1..{self.config.search.max_page_size}")
        where, params = ["id > ?"], [after_id]
        if state is not None:
            where.append("state = ?")
            params.append(TitleState(state).value)
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        with self._tx(write=False) as tx:
            ids = tx.rows(f"SELECT id FROM titles WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
                          (*params, limit))
            return [self._load_title(tx, int(r[0])) for r in ids]

    def categories(self) -> list[tuple[str, str]]:
        """Every category as (slug, name)."""
        with self._tx(write=False) as tx:
            return [(r[0], r[1]) for r in tx.rows("SELECT slug, name FROM categories ORDER BY slug")]

    def languages(self) -> list[tuple[str, str]]:
        """Every language as (code, name)."""
        with self._tx(write=False) as tx:
            return [(r[0], r[1]) for r in tx.rows("SELECT code, name FROM languages ORDER BY code")]

    def name_label(self, kind: str, key: str, name: str) -> None:
        """Give a category or language its display name (``kind`` is ``category`` or ``language``)."""
        table, col = {"category": ("categories", "slug"), "language": ("languages", "code")}[kind]
        with self._tx(write=True) as tx:
            tx.run(f"INSERT INTO {table} ({col}, name) VALUES (?, ?) ON CONFLICT ({col}) DO UPDATE SET name = ?",
                   (key, name, name))

    def _ensure_labels(self, tx: Tx, draft: TitleDraft) -> None:
        if draft.category is not None:
            tx.run("INSERT INTO categories (slug, name) VALUES (?, ?) ON CONFLICT (slug) DO NOTHING",
                   (draft.category, draft.category))
        if draft.language is not None:
            tx.run("INSERT INTO languages (code, name) VALUES (?, ?) ON CONFLICT (code) DO NOTHING",
                   (draft.language, draft.language))

    def _set_people(self, tx: Tx, title_id: int, people: Iterable[Person]) -> None:
        tx.run("DELETE FROM title_people WHERE title_id = ?", (title_id,))
        for pos, p in enumerate(people):
            tx.run("INSERT INTO people (name) VALUES (?) ON CONFLICT (name) DO NOTHING", (p.name,))
            tx.run("INSERT INTO title_people (title_id, position, person_id, role) "
                   "SELECT ?, ?, id, ? FROM people WHERE name = ?", (title_id, pos, p.role, p.name))

    def _load_title(self, tx: Tx, title_id: int) -> Title:
        row = tx.one(f"SELECT {_TITLE_COLS} FROM titles WHERE id = ?", (title_id,))
        if row is None:
            raise TitleNotFound(f"no title {title_id}")
        people = tuple(Person(name=n, role=r) for n, r in tx.rows(
            "SELECT p.name, tp.role FROM title_people tp JOIN people p ON p.id = tp.person_id "
            "WHERE tp.title_id = ? ORDER BY tp.position", (title_id,)))
        renditions = tuple(Rendition(**r) for r in json.loads(row[9]))
        return Title(id=int(row[0]), title=row[1], description=row[2], category=row[3], year=row[4],
                     language=row[5], duration_s=row[6], state=TitleState(row[7]), progress=float(row[8]),
                     renditions=renditions, upload=row[10], owner=row[11], error=row[12],
                     created=float(row[13]), updated=float(row[14]), people=people)

    def _move(self, tx: Tx, title_id: int, state: TitleState, *, progress: float | None,
              error: str | None, renditions: Sequence[Rendition] | None) -> None:
        row = tx.one("SELECT state FROM titles WHERE id = ?", (title_id,))
        if row is None:
            raise TitleNotFound(f"no title {title_id}")
        state = TitleState(state)
        check_transition(TitleState(row[0]), state)
        sets, params = ["state = ?", "updated = ?"], [state.value, self.clock.time()]
        if progress is not None:
            sets.append("progress = ?")
            params.append(min(1.0, max(0.0, float(progress))))
        elif state in (TitleState.PACKAGED, TitleState.PUBLISHED):
            sets.append("progress = 1")
        sets.append("error = ?")
        params.append(error[:MAX_ERROR_CHARS] if error else None)
        if renditions is not None:
            sets.append("renditions = ?")
            params.append(json.dumps([_rendition_dict(r) for r in renditions]))
            self._supersede(tx, title_id, renditions)
        tx.run(f"UPDATE titles SET {', '.join(sets)} WHERE id = ?", (*params, title_id))
        self._reindex(tx, title_id)

    # --- retired versions (versions.py) --------------------------------------------------------

    def _supersede(self, tx: Tx, title_id: int, renditions: Sequence[Rendition]) -> None:
        """The title's renditions are about to become ``renditions``: record the version folders
        they leave for deletion (since now), and forget any record of a folder they name again
        (the published version is never deleted). In the caller's transaction."""
        row = tx.one("SELECT renditions FROM titles WHERE id = ?", (title_id,))
        before = folders(title_id, (r["path"] for r in json.loads(row[0]))) if row else set()
        after = folders(title_id, (r.path for r in renditions))
        for prefix in sorted(before - after):
            self._retire(tx, prefix, SUPERSEDED)
        for prefix in sorted(after):
            tx.run("DELETE FROM retired_versions WHERE prefix = ?", (prefix,))

    def _retire(self, tx: Tx, prefix: str, reason: str) -> None:
        """Record ``prefix`` for deletion (kept as first recorded if it already is)."""
        parsed = parse_version_prefix(prefix)
        if parsed is None:
            raise ValueError(f"{prefix!r} is not a version prefix (titles/T/vN/)")
        title_id, job_id, attempt = parsed
        tx.run("INSERT INTO retired_versions (prefix, title_id, job_id, attempt, reason, since) "
               "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (prefix) DO NOTHING",
               (prefix, title_id, job_id, attempt, reason, self.clock.time()))

    def retired_versions(self, *, limit: int = 1000) -> list[RetiredVersion]:
        """The prefixes waiting for deletion, oldest first (for the sweep's status and tests)."""
        with self._tx(write=False) as tx:
            rows = tx.rows(f"SELECT {_RETIRED_COLS} FROM retired_versions ORDER BY since, prefix LIMIT ?", (limit,))
        return [_retired(r) for r in rows]

    def claim_retired_versions(self, sweeper: str, *, retired_before: float, claim_s: float,
                               limit: int = 16) -> list[RetiredVersion]:
        """Up to ``limit`` prefixes retired before ``retired_before`` (wall clock) that no other
        sweep holds, claimed by ``sweeper`` for ``claim_s`` seconds: two sweeps (two hosts)
        never work one prefix at once (PostgreSQL's rows are locked SKIP LOCKED; SQLite's
        writer transaction excludes the other sweep).

        In the same transaction each is checked against what must never be deleted: a prefix
        its title's renditions name (published again: its record is dropped) and a prefix an
        attempt holding a live lease is writing (left for a later sweep)."""
        now = self.clock.time()
        with self._tx(write=True) as tx:
            rows = tx.rows(f"SELECT {_RETIRED_COLS} FROM retired_versions WHERE since <= ? AND claimed_until <= ? "
                           f"ORDER BY since, prefix LIMIT ?{self.lease_lock_clause}", (retired_before, now, limit))
            claimed = []
            for r in map(_retired, rows):
                title = tx.one("SELECT renditions FROM titles WHERE id = ?", (r.title_id,))
                if title is not None and r.prefix in folders(r.title_id, (x["path"] for x in json.loads(title[0]))):
                    tx.run("DELETE FROM retired_versions WHERE prefix = ?", (r.prefix,))
                    continue
                until = now + claim_s
                if r.job_id is not None and r.attempt is not None and tx.one(
                        "SELECT 1 FROM jobs WHERE id = ? AND attempts = ? AND state = 'leased' AND lease_expires > ?",
                        (r.job_id, r.attempt, now)) is not None:
                    # Its attempt still holds its lease: not dead after all. Looked at again later.
                    tx.run("UPDATE retired_versions SET claimed_by = NULL, claimed_until = ? WHERE prefix = ?",
                           (until, r.prefix))
                    continue
                tx.run("UPDATE retired_versions SET claimed_by = ?, claimed_until = ? WHERE prefix = ?",
                       (sweeper[:200], until, r.prefix))
                claimed.append(RetiredVersion(prefix=r.prefix, title_id=r.title_id, job_id=r.job_id,
                                              attempt=r.attempt, reason=r.reason, since=r.since,
                                              claimed_by=sweeper[:200], claimed_until=until))
            return claimed

    def forget_retired_version(self, prefix: str, sweeper: str) -> bool:
        """Remove the record of ``prefix`` (its folder has listed empty) if ``sweeper`` still
        holds its claim; whether it did."""
        with self._tx(write=True) as tx:
            return bool(tx.run("DELETE FROM retired_versions WHERE prefix = ? AND claimed_by = ?",
                               (prefix, sweeper[:200])))

    # --- the search index --------------------------------------------------------------------

    def _reindex(self, tx: Tx, title_id: int) -> None:
        """Make the title's search entry and vocabulary match it: present iff it is published."""
        was_indexed = self._unindex(tx, title_id)
        row = tx.one("SELECT title, description, state FROM titles WHERE id = ?", (title_id,))
        if row is None or row[2] != TitleState.PUBLISHED.value:
            if was_indexed:
                self._search_changed(tx, [title_id])
            return
        people = [n for (n,) in tx.rows(
            "SELECT p.name FROM title_people tp JOIN people p ON p.id = tp.person_id "
            "WHERE tp.title_id = ? ORDER BY tp.position", (title_id,))]
        self._index(tx, title_id, row[0], people, row[1])
        self._search_changed(tx, [title_id])

    def _unindex(self, tx: Tx, title_id: int) -> bool:
        """Remove the title's search entry and its words from the vocabulary; whether it had one."""
        key = self.search_key
        old = tx.one(f"SELECT title, people, description FROM title_search WHERE {key} = ?", (title_id,))
        if old is None:
            return False
        tx.run(f"DELETE FROM title_search WHERE {key} = ?", (title_id,))
        tx.run("DELETE FROM search_postings WHERE title_id = ?", (title_id,))
        if self.search_terms:
            tx.run("DELETE FROM search_terms WHERE title_id = ?", (title_id,))
        self._count_words(tx, set(" ".join(old).split()), -1)
        self._count_documents(tx, -1)
        return True

    def _search_changed(self, tx: Tx, title_ids: list[int]) -> None:
        """Called in the transaction that changed these titles' search entries (published,
        withdrawn, metadata): PostgreSQL appends them to its search feed (localsearch.py)."""

    def _index(self, tx: Tx, title_id: int, title: str, people: Iterable[str], description: str, *,
               count: bool = True) -> dict[str, float]:
        """Add the title's search entry and postings; its distinct words with their impacts are
        returned and, with ``count``, added to the vocabulary and the document count (else the
        caller adds them: :meth:`import_titles`)."""
        doc = (normalised_text(title), normalised_text(" ".join(people)), normalised_text(description))
        tx.run(f"INSERT INTO title_search ({self.search_key}, title, people, description, title_words) "
               "VALUES (?, ?, ?, ?, ?)", (title_id, *doc, max(1, len(doc[0].split()))))
        found = impacts(*doc)
        entries = sorted({**found, **prefix_impacts(found)}.items())
        # One statement per title, the postings as one JSON parameter: a statement per posting
        # (some 55 a title) made a PostgreSQL import four times slower.
        tx.run(f"INSERT INTO search_postings (title_id, word, impact) SELECT ?, {self._json_item(0)}, "
               f"{self._json_item(1, 'double precision')} FROM {self.json_pair_rows}",
               (title_id, json.dumps(entries)))
        if self.search_terms:
            # The same entries as one row (json's floats are repr's: read back, the same doubles).
            tx.run("INSERT INTO search_terms (title_id, terms) VALUES (?, ?::jsonb)", (title_id, json.dumps(dict(entries))))
        if count:
            self._add_words(tx, dict.fromkeys(found, 1), found)
            self._count_documents(tx, +1)
        return found

    def _count_documents(self, tx: Tx, delta: int) -> None:
        tx.run("INSERT INTO search_stats (name, value) VALUES ('documents', ?) "
               "ON CONFLICT (name) DO UPDATE SET value = search_stats.value + excluded.value", (delta,))

    def _add_words(self, tx: Tx, counts: dict[str, int], peaks: dict[str, float]) -> None:
        """Add ``counts`` (word → documents that gained it) to the vocabulary with the words'
        highest impacts (``peaks``), in two statements."""
        if not counts:
            return
        tx.run(f"INSERT INTO search_words (word, docs, max_impact) SELECT {self._json_item(0)}, "
               f"{self._json_item(1, 'integer')}, {self._json_item(2, 'double precision')} FROM {self.json_pair_rows} "
               "WHERE true ON CONFLICT (word) DO UPDATE SET docs = search_words.docs + excluded.docs, "
               f"max_impact = {self.greatest}(search_words.max_impact, excluded.max_impact)",
               (json.dumps([(w, n, peaks.get(w, 0.0)) for w, n in sorted(counts.items())]),))
        variants = json.dumps(sorted({(v, w) for w in counts for v in deletions(w)}))
        tx.run(f"INSERT INTO search_deletions (variant, word) SELECT {self.json_pair} FROM {self.json_pair_rows} "
               "WHERE true ON CONFLICT (variant, word) DO NOTHING", (variants,))

    def _count_words(self, tx: Tx, found: set[str], delta: int) -> None:
        # Set-based, one statement each whatever the number of words: the words travel as one
        # JSON array parameter (json_each / json_array_elements_text), never as SQL text.
        if not found:
            return
        listed = json.dumps(sorted(found))
        if delta > 0:
            # "WHERE true" (in _add_words): SQLite's parser needs it between INSERT … SELECT and
            # ON CONFLICT. (Indexing adds words with their impacts through _add_words itself.)
            self._add_words(tx, dict.fromkeys(found, 1), {})
        else:
            # A word's max_impact stays as it was: still a bound for the words left.
            tx.run(f"UPDATE search_words SET docs = docs - 1 WHERE word IN (SELECT value FROM {self.json_rows})",
                   (listed,))
            tx.run("DELETE FROM search_deletions WHERE word IN (SELECT word FROM search_words WHERE docs <= 0 "
                   f"AND word IN (SELECT value FROM {self.json_rows}))", (listed,))
            tx.run("DELETE FROM search_words WHERE docs <= 0")

    def search(self, query: SearchQuery) -> SearchPage:
        """Published titles matching ``query``: ranked by relevance (by recency without words),
        filtered, one page. Misspelt words are read as their nearest known words."""
        limits = self.config.search
        check_query(query, limits)
        terms = query_words(query.q, limits)
        where = ["t.state = 'published'"]
        params: list[Any] = []
        for col, value in (("t.category", query.category), ("t.language", query.language)):
            if value is not None:
                where.append(f"{col} = ?")
                params.append(value)
        for col, op, value in (("t.year", ">=", query.year_min), ("t.year", "<=", query.year_max),
                               ("t.duration_s", ">=", query.duration_min_s),
                               ("t.duration_s", "<=", query.duration_max_s)):
            if value is not None:
                where.append(f"{col} {op} ?")
                params.append(value)
        corrections: dict[str, str] = {}
        groups: list[TermGroup] = []
        # The total and the facets count matches up to cap (one more tells it is not exact).
        cap = limits.exact_total_max
        with self._tx(write=False) as tx:
            if terms:
                known = set(self._vocabulary(tx, terms))
                candidates: dict[str, list[tuple[str, int]]] = {}
                for term in terms:
                    if term in known or not max_edits(term):
                        continue
                    variants = sorted(deletions(term))
                    candidates[term] = [(r[0], int(r[1])) for r in tx.rows(
                        "SELECT DISTINCT w.word, w.docs FROM search_deletions d JOIN search_words w ON w.word = d.word "
                        f"WHERE d.variant IN ({_marks(len(variants))}) ORDER BY w.docs DESC LIMIT 50", variants)]
                groups, corrections = plan_groups(terms, known, candidates, limits)
                rows, by_category = self._match(tx, groups, where, params, query.limit + 1, query.offset,
                                                cap + 1 if query.with_total else None)
            else:
                rows = tx.rows(f"SELECT {_HIT_COLS}, 0 FROM titles t WHERE {' AND '.join(where)} "
                               "ORDER BY t.updated DESC, t.id DESC LIMIT ? OFFSET ?",
                               (*params, query.limit + 1, query.offset))
                # One capped count grouped by category: a filter matching half the catalogue
                # costs at most cap rows, not the whole table.
                by_category = tx.rows(
                    f"SELECT category, count(*) FROM (SELECT t.category AS category FROM titles t "
                    f"WHERE {' AND '.join(where)} LIMIT ?) m GROUP BY category", (*params, cap + 1)) \
                    if query.with_total else None
        counted = _tally(by_category, cap) if by_category is not None else None
        hits = tuple(SearchHit(id=int(r[0]), title=r[1], category=r[2], year=r[3], language=r[4],
                               duration_s=r[5], score=float(r[6])) for r in rows[:query.limit])
        more = len(rows) > query.limit and query.offset + query.limit <= limits.max_offset
        total, exact, facets = counted if counted is not None else (None, True, {})
        return SearchPage(hits=hits, offset=query.offset, limit=query.limit,
                          next_offset=query.offset + query.limit if more else None, corrections=corrections,
                          total=total, total_exact=exact, facets=facets)

    # --- the job queue -----------------------------------------------------------------------

    def enqueue(self, kind: str, key: str, *, title_id: int | None = None, payload: dict | None = None,
                max_attempts: int | None = None, delay_s: float = 0.0) -> Job:
        """Queue a job once: a second call with the same idempotency ``key`` returns the first job."""
        if not (0 < len(kind) <= 64) or not (0 < len(key) <= MAX_KEY_CHARS):
            raise BadQuery("job kind must be 1..64 and key 1..200 characters")
        body = json.dumps(payload or {}, sort_keys=True)
        if len(body) > MAX_PAYLOAD_BYTES:
            raise BadQuery("job payload is too large")
        now = self.clock.time()
        attempts = max_attempts or self.config.job_max_attempts
        with self._tx(write=True) as tx:
            tx.run("INSERT INTO jobs (kind, title_id, key, payload, state, max_attempts, run_at, created, updated) "
                   "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                   (kind, title_id, key, body, attempts, now + delay_s, now, now))
            row = tx.one(f"SELECT {_JOB_COLS} FROM jobs WHERE key = ?", (key,))
            assert row is not None
            return _job(row)

    def get_job(self, job_id: int) -> Job:
        """The job, or :class:`JobNotFound`."""
        with self._tx(write=False) as tx:
            row = tx.one(f"SELECT {_JOB_COLS} FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            raise JobNotFound(f"no job {job_id}")
        return _job(row)

    def ready_jobs(self) -> dict[str, tuple[int, float]]:
        """Per job kind, the jobs waiting for a worker (queued and due) and the oldest one's due
        time (wall clock): what the origin exports as its queue depth and queue age. One indexed
        scan (``jobs_ready``)."""
        now = self.clock.time()
        with self._tx(write=False) as tx:
            rows = tx.rows("SELECT kind, count(*), min(run_at) FROM jobs WHERE state = 'queued' AND run_at <= ? "
                           "GROUP BY kind", (now,))
        return {str(kind): (int(n), float(oldest)) for kind, n, oldest in rows}

    def lease(self, worker: str, kinds: Sequence[str], lease_s: float | None = None, *,
              fail_titles: bool = False,
              attempt_prefix: Callable[[int, int, int], str] | None = None) -> Lease | None:
        """Take the next runnable job of one of ``kinds`` for ``lease_s`` seconds, or ``None``.

        Runnable: queued and due, or leased by a worker whose lease has expired (it died).
        A job whose lease expired on its last allowed attempt is dead instead; with
        ``fail_titles`` (the transcoder's jobs: their title's state is theirs) its title, if it
        is still ``transcoding`` or ``packaged``, is ``failed`` with it — else it would show
        ``transcoding`` forever, with no job left to move it and no retry allowed.

        With ``attempt_prefix`` ((title, job, attempt) → the object prefix that attempt writes:
        the transcoder's) the prefix of every attempt found dead here (taken over, or dead on
        its last attempt) is recorded for deletion (:meth:`claim_retired_versions`) in this
        same transaction.
        """
        if not kinds:
            return None
        lease_s = lease_s or self.config.job_lease_s
        now = self.clock.time()
        kinds = list(kinds)
        with self._tx(write=True) as tx:
            if fail_titles:
                tx.run("UPDATE titles SET state = 'failed', error = ?, updated = ? "
                       "WHERE state IN ('transcoding', 'packaged') AND id IN (SELECT title_id FROM jobs "
                       "WHERE state = 'leased' AND lease_expires <= ? AND attempts >= max_attempts "
                       f"AND kind IN ({_marks(len(kinds))}))",
                       (_DIED_ON_LAST_ATTEMPT, now, now, *kinds))
            dead = tx.rows("UPDATE jobs SET state = 'failed', updated = ?, leased_by = NULL, lease_expires = NULL, "
                           "last_error = ? "
                           f"WHERE state = 'leased' AND lease_expires <= ? AND attempts >= max_attempts "
                           f"AND kind IN ({_marks(len(kinds))}) RETURNING id, title_id, attempts",
                           (now, _DIED_ON_LAST_ATTEMPT, now, *kinds))
            row = tx.one(
                f"SELECT id, state, title_id, attempts FROM jobs WHERE kind IN ({_marks(len(kinds))}) AND "
                "((state = 'queued' AND run_at <= ?) OR (state = 'leased' AND lease_expires <= ?)) "
                f"ORDER BY run_at, id LIMIT 1{self.lease_lock_clause}", (*kinds, now, now))
            if attempt_prefix is not None:
                if row is not None and row[1] == JobState.LEASED.value:
                    dead.append((row[0], row[2], row[3]))  # its attempt died: this lease takes it over
                for job_id, title_id, attempt in dead:
                    if title_id is not None and attempt:
                        self._retire(tx, attempt_prefix(int(title_id), int(job_id), int(attempt)), DEAD)
            if row is None:
                return None
            expires = now + lease_s
            got = tx.one(f"UPDATE jobs SET state = 'leased', attempts = attempts + 1, lease_token = lease_token + 1, "
                         f"leased_by = ?, lease_expires = ?, updated = ? WHERE id = ? RETURNING {_JOB_COLS}",
                         (worker[:200], expires, now, row[0]))
            assert got is not None
            return Lease(job=_job(got), token=int(got[14]), worker=worker, expires=expires)

    def heartbeat(self, lease: Lease, lease_s: float | None = None, *, progress: float | None = None) -> Lease:
        """Extend the lease (and report the title's progress, fenced by the same token)."""
        lease_s = lease_s or self.config.job_lease_s
        now = self.clock.time()
        with self._tx(write=True) as tx:
            self._fence(tx, lease, "lease_expires = ?, updated = ?", (now + lease_s, now))
            if progress is not None and lease.job.title_id is not None:
                tx.run("UPDATE titles SET progress = ?, updated = ? WHERE id = ?",
                       (min(1.0, max(0.0, float(progress))), now, lease.job.title_id))
        return Lease(job=lease.job, token=lease.token, worker=lease.worker, expires=now + lease_s)

    def complete(self, lease: Lease, *, title_state: TitleState | None = None,
                 renditions: Sequence[Rendition] | None = None) -> None:
        """Mark the job done; with ``title_state``, move its title in the same transaction, so the
        title's result is applied once, by the holder of the current lease only."""
        now = self.clock.time()
        with self._tx(write=True) as tx:
            self._fence(tx, lease, "state = 'done', lease_expires = NULL, last_error = NULL, updated = ?", (now,))
            if title_state is not None and lease.job.title_id is not None:
                self._move(tx, lease.job.title_id, title_state, progress=None, error=None, renditions=renditions)

    def move_title(self, lease: Lease, state: TitleState, *, progress: float | None = None,
                   error: str | None = None) -> Title:
        """Move the lease's title (as :meth:`set_state`), fenced by the lease in the same
        transaction: a worker whose lease was taken by another changes nothing (:class:`LeaseLost`)."""
        if lease.job.title_id is None:
            raise JobNotFound(f"job {lease.job.id} has no title")
        now = self.clock.time()
        with self._tx(write=True) as tx:
            self._fence(tx, lease, "updated = ?", (now,))
            self._move(tx, lease.job.title_id, state, progress=progress, error=error, renditions=None)
            return self._load_title(tx, lease.job.title_id)

    def fail(self, lease: Lease, error: str, *, retry: bool = True, move_title: bool = False,
             retire_prefix: str | None = None) -> Job:
        """Record a failed run: queued again after a backoff, or dead (``failed``) once the job has
        used its attempts or ``retry`` is false (the input is bad; running again cannot help).

        With ``move_title`` the job's title follows in the same transaction: back to
        ``transcoding`` at 0 % with the error shown when the job is queued again, ``failed`` with
        the error when it is dead (a withdrawn title stays withdrawn). One transaction, so no
        reader sees a failed title whose job is still leased, or a dead job whose title still
        reads as transcoding.

        ``retire_prefix``: the failed attempt's object prefix, recorded for deletion in the same
        transaction (its own clean-up may have failed: the store may be what failed)."""
        now = self.clock.time()
        error = error[:MAX_ERROR_CHARS]
        with self._tx(write=True) as tx:
            row = tx.one("SELECT attempts, max_attempts FROM jobs WHERE id = ? AND lease_token = ? AND state = 'leased'",
                         (lease.job.id, lease.token))
            if row is None:
                raise LeaseLost(f"job {lease.job.id}: {lease.worker} no longer holds its lease")
            attempts, max_attempts = int(row[0]), int(row[1])
            if retire_prefix is not None:
                self._retire(tx, retire_prefix, FAILED)
            again = retry and attempts < max_attempts
            if again:
                run_at = now + self.config.backoff.delay(attempts, self.rng)
                self._fence(tx, lease, "state = 'queued', run_at = ?, lease_expires = NULL, leased_by = NULL, "
                            "last_error = ?, updated = ?", (run_at, error, now))
            else:
                self._fence(tx, lease, "state = 'failed', lease_expires = NULL, last_error = ?, updated = ?",
                            (error, now))
            # A title withdrawn meanwhile stays withdrawn: the job's end must not bring it back.
            state = tx.one("SELECT state FROM titles WHERE id = ?", (lease.job.title_id,)) if move_title else None
            if state is not None and state[0] != TitleState.WITHDRAWN.value:
                if again:
                    self._move(tx, lease.job.title_id, TitleState.TRANSCODING, progress=0.0, renditions=None,
                               error=f"attempt {attempts} of {max_attempts} failed, retrying: {error}")
                else:
                    self._move(tx, lease.job.title_id, TitleState.FAILED, progress=None, error=error,
                               renditions=None)
            got = tx.one(f"SELECT {_JOB_COLS} FROM jobs WHERE id = ?", (lease.job.id,))
            assert got is not None
            return _job(got)

    def _fence(self, tx: Tx, lease: Lease, sets: str, params: Sequence[Any]) -> None:
        n = tx.run(f"UPDATE jobs SET {sets} WHERE id = ? AND lease_token = ? AND state = 'leased'",
                   (*params, lease.job.id, lease.token))
        if not n:
            raise LeaseLost(f"job {lease.job.id}: {lease.worker} no longer holds its lease")


_HIT_COLS = "t.id, t.title, t.category, t.year, t.language, t.duration_s"


def _probes(n_words: int, titles: str) -> str:
    """PostgreSQL: the postings of ``n_words`` words (bound after the parameters of the subquery
    ``titles``) of its titles, a FROM of ``q.title_id, q.word, q.impact``: per title a
    ``CROSS JOIN LATERAL`` subquery of one index-only probe of the primary key per word (the
    title and the word, a unique key: the planner never reads a word's list for it), the
    words' probes joined by ``UNION ALL``. (OFFSET 0 keeps the planner from flattening it into
    a join it may run as a hash join over the words' whole lists: some 15 ms of CPU for 1,000
    titles become 65 for a common word's 81,000 postings; docs/origin-catalogue.md.) One probe
    with ``word IN (…)`` of two words or more made the planner test the words as a filter over
    every posting of the title (some 56), one descent but a far longer read: 1,000 titles of
    `ver` looked up in `ramarwin` and `*ver` 10.2 → 6.8 ms of server CPU (best of 11, load 19).
    (The titles bound as an array in one scan per word, ``title_id = ANY(ARRAY(…)) AND word =
    ?``, spared the restarts too, but left the planner free to read a word's list instead, which
    it did for a word it took for rare: `anlo`, 8,688 postings, for 19 titles.)"""
    probes = " UNION ALL ".join(f"SELECT q.title_id, q.word, q.impact FROM search_postings q "
                                f"WHERE q.title_id = f.id AND q.word = ?" for _ in range(n_words))
    return f"({titles}) f(id) CROSS JOIN LATERAL (SELECT * FROM ({probes}) u OFFSET 0) q"


def _term_probes(n_words: int, titles: str) -> str:
    """PostgreSQL: the impacts of ``n_words`` words (bound before the parameters of the subquery
    ``titles``) in its titles, a select of ``title_id, word, impact, impacts``: one row per
    title, ``impacts`` the words' impacts in their order (NULL where the title lacks one),
    from one probe of ``search_terms``' primary key per title holding one of the words at least
    (a title holding none is no row: a rare word's lookups return a few rows, not one a title,
    which cost the client more than the probes saved the server) (the titles as an array: one
    index scan, no per-title subplan; the table has no other index the planner could read
    instead) and a key lookup in its JSON object per word (jsonb keeps an object's keys
    sorted: a binary search, not a walk of the title's ~56 entries). Where :func:`_probes`
    descended the postings' primary key once per title and word: 1,000 titles of `vor` and
    `*vor` looked up in `kelgar` 5.8 -> 3.9 ms of server CPU, 2,000 of `vor` alone 8.0 -> 6.2
    ms (best of 25; the same table as two arrays, words and impacts, read by
    ``array_position``, 5.0 and 7.5 ms: the array is walked entry by entry)."""
    looked = ", ".join("(s.terms -> ?::text)::double precision" for _ in range(n_words))
    return (f"SELECT s.title_id, NULL AS word, NULL::double precision AS impact, ARRAY[{looked}] AS impacts "
            f"FROM search_terms s WHERE s.title_id = ANY(ARRAY({titles})) AND jsonb_exists_any(s.terms, ?::text[])")


def _summed(rows: Iterable[tuple], words: list[str], lookup: dict[str, list[tuple[int, float]]], n_groups: int,
            ids: list[int] | dict[int, float], known: int | None) -> list[tuple[int, float]]:
    """(title id, score) of the titles of ``ids`` holding every group, from ``rows`` of their
    postings of ``words`` (:meth:`SqlCatalogue._lookup_select`: title, word, impact, or
    (:func:`_term_probes`) title and the impacts of ``words`` in order) and ``lookup`` (word →
    its groups and weights): a group scores its best weighted impact, the score is the groups'
    sum (in group order, as ``_scored``'s SQL adds them). With ``known``, ``ids`` maps each title
    to its score in that group; rows of titles not in ``ids`` are skipped. (A third of a long
    walk's client CPU: kept to plain loops.)"""
    per: dict[int, list[float]] = {}
    among = ids if isinstance(ids, dict) else None
    plan = [lookup[w] for w in words]
    for tid, word, impact, impacts in rows:
        got = per.get(tid)
        if got is None:
            if among is not None and tid not in among:
                continue
            got = per[tid] = [0.0] * n_groups
            if known is not None:
                got[known] = ids[tid]  # type: ignore[index]
        if impacts is None:
            for gi, weight in lookup[word]:
                v = weight * impact
                if v > got[gi]:
                    got[gi] = v
            continue
        for groups, impact in zip(plan, impacts):
            if impact is not None:
                for gi, weight in groups:
                    v = weight * impact
                    if v > got[gi]:
                        got[gi] = v
    out = []
    for tid, got in per.items():
        score = 0.0
        for v in got:
            if v <= 0.0:
                break
            score += v
        else:
            out.append((int(tid), score))
    return out


def _tally(rows: list[tuple], cap: int) -> tuple[int, bool, dict[str, int]]:
    """(total, exact, category facets) from (category, count) rows over at most ``cap + 1``
    matches."""
    found = sum(int(n) for _, n in rows)
    facets = {c: int(n) for c, n in sorted(rows, key=lambda r: (-int(r[1]), r[0] or "")) if c is not None}
    return min(found, cap), found <= cap, facets


def _rendition_dict(r: Rendition) -> dict:
    return {"name": r.name, "codec": r.codec, "width": r.width, "height": r.height,
            "bitrate": r.bitrate, "path": r.path}


def _retired(row: tuple) -> RetiredVersion:
    return RetiredVersion(prefix=row[0], title_id=int(row[1]), job_id=None if row[2] is None else int(row[2]),
                          attempt=None if row[3] is None else int(row[3]), reason=row[4], since=float(row[5]),
                          claimed_by=row[6], claimed_until=float(row[7]))


def _job(row: tuple) -> Job:
    return Job(id=int(row[0]), kind=row[1], title_id=row[2], key=row[3], payload=json.loads(row[4]),
               state=JobState(row[5]), attempts=int(row[6]), max_attempts=int(row[7]), run_at=float(row[8]),
               lease_expires=None if row[9] is None else float(row[9]), leased_by=row[10],
               last_error=row[11], created=float(row[12]), updated=float(row[13]))
