"""A deterministic catalogue for search tests: a few named titles the tests look for, among
thousands of generated ones whose words never collide with theirs."""

from __future__ import annotations

import random

from headwater.origin.catalogue import Person, TitleDraft

__all__ = ["NAMED", "generated", "HIDDEN"]

# (title, category, year, language, duration_s, people)
NAMED = [
    TitleDraft(title="Night Train", category="drama", year=2026, language="en", duration_s=5400,
               description="A sleeper carriage crosses the border at dawn.",
               people=(Person(name="Ana Ruiz", role="director"), Person(name="Tomas Weber"))),
    TitleDraft(title="Night Train to Lisbon", category="drama", year=2013, language="en", duration_s=6660,
               description="A teacher leaves everything behind.", people=(Person(name="Bille August", role="director"),)),
    TitleDraft(title="The Night Watch", category="thriller", year=2019, language="nl", duration_s=6000,
               description="Guards of a museum after closing time."),
    TitleDraft(title="Train of Thought", category="documentary", year=2021, language="fr", duration_s=3000,
               description="How ideas travel."),
    TitleDraft(title="Último Tren", category="drama", year=2002, language="es", duration_s=5700,
               description="Three old friends steal a locomotive."),
    TitleDraft(title="Short Night", category="comedy", year=2024, language="en", duration_s=600,
               description="A ten-minute film."),
]
# Created but never published: no search may ever return them.
HIDDEN = [
    TitleDraft(title="Night Train Secrets", category="drama", year=2025, language="en", duration_s=5000,
               description="Unpublished."),
]

_ADJ = ["silent", "crimson", "golden", "broken", "hidden", "frozen", "distant", "burning", "hollow", "wild",
        "quiet", "bitter", "velvet", "iron", "paper", "electric", "lonely", "savage", "gentle", "endless"]
_NOUN = ["river", "harbour", "garden", "mountain", "empire", "mirror", "kingdom", "forest", "summer", "winter",
         "island", "desert", "orchard", "lantern", "compass", "shadow", "meadow", "engine", "canyon", "signal"]
_FIRST = ["maria", "john", "li", "fatima", "olga", "pierre", "kenji", "amara", "lucas", "sofia"]
_LAST = ["moreno", "smith", "chen", "haddad", "ivanova", "dubois", "sato", "okafor", "silva", "rossi"]
_CATS = ["drama", "comedy", "thriller", "documentary", "animation", "horror"]
_LANGS = ["en", "fr", "de", "es", "ja", "pt"]


def generated(n: int, seed: int = 7) -> list[TitleDraft]:
    """``n`` titles from a seeded generator (same list on every run)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = [rng.choice(_ADJ).title(), rng.choice(_NOUN).title()]
        if rng.random() < 0.4:
            words.append(rng.choice(["of the", "and the", "beyond the"]) + " " + rng.choice(_NOUN).title())
        people = tuple(Person(name=f"{rng.choice(_FIRST).title()} {rng.choice(_LAST).title()}")
                       for _ in range(rng.randint(1, 3)))
        out.append(TitleDraft(
            title=f"{' '.join(words)} {i}", category=rng.choice(_CATS), year=rng.randint(1950, 2026),
            language=rng.choice(_LANGS), duration_s=float(rng.randint(300, 10800)), people=people,
            description=f"The {rng.choice(_ADJ)} story of a {rng.choice(_NOUN)} and a {rng.choice(_NOUN)}."))
    return out
