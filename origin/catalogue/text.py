"""Search text, sans-IO: how titles and queries become terms, and how a misspelt term finds its
neighbours in the vocabulary.

Both backends index the *same* normalised words (:func:`words`): Unicode NFKD with the combining
marks dropped, case-folded, split on anything that is not a letter or a digit. SQLite's FTS5
``unicode61`` tokenizer and PostgreSQL's ``simple`` configuration then see plain words, so a
query behaves the same on either, and no database extension (``unaccent``) is needed.

Typo tolerance is symmetric deletion (as SymSpell): every vocabulary word is stored with each
of its one-letter deletions; a query word's own deletions looked up in that table find every
word within one edit (substitution, insertion, deletion, adjacent transposition) by index
lookups alone. Trigram similarity misses the common case: ``similarity('trian', 'train')`` is
0.2 under pg_trgm, below its 0.3 default threshold, while ``trian`` and ``train`` share the
deletion ``tran``. :func:`edit_distance` then confirms and orders the candidates.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["words", "normalised_text", "deletions", "edit_distance", "max_edits",
           "MAX_WORD_CHARS", "MIN_TYPO_CHARS"]

_WORD = re.compile(r"[^\W_]+")
# A word longer than this is not a word anyone types into a search box; it is cut, so one
# hostile title cannot put kilobyte keys into the vocabulary.
MAX_WORD_CHARS = 40
# Words shorter than this are never corrected: at two letters every word is one edit from dozens.
MIN_TYPO_CHARS = 4


def words(text: str) -> list[str]:
    """The normalised words of ``text``, in order (duplicates kept)."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return [w[:MAX_WORD_CHARS] for w in _WORD.findall(stripped.casefold())]


def normalised_text(text: str) -> str:
    """``text`` as the space-separated normalised words the indexes store."""
    return " ".join(words(text))


def deletions(word: str) -> set[str]:
    """The word itself and every string made by deleting one of its letters."""
    out = {word}
    for i in range(len(word)):
        out.add(word[:i] + word[i + 1:])
    return out


def max_edits(word: str) -> int:
    """How many edits a query word may be from the word it is corrected to (0 or 1)."""
    return 0 if len(word) < MIN_TYPO_CHARS else 1


def edit_distance(a: str, b: str, *, limit: int = 2) -> int:
    """Optimal-string-alignment distance (Levenshtein plus adjacent transpositions), capped at
    ``limit + 1`` so a far pair costs no more than a near one."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return min(prev[-1], limit + 1)
