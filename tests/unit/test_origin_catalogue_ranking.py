"""The search ranking's sans-IO parts: impacts (per-field saturation and length), prefix lists,
IDF, the top-k state."""

from __future__ import annotations

from headwater.origin.catalogue.ranking import TopK, idf, impacts, max_impact, prefix_impacts, prefix_key


def test_a_title_word_outweighs_a_description_word_and_shorter_titles_win():
    a = impacts("Night Train", "", "")
    b = impacts("Night Train to Lisbon", "", "")
    c = impacts("Summer", "", "a night on the train")
    assert a["night"] > b["night"] > c["night"] > 0
    assert impacts("Night", "Night Owl", "")["night"] > impacts("Night", "", "")["night"]
    assert all(0 < v <= max_impact() for v in {**a, **b, **c}.values())


def test_repeats_saturate():
    once, twice, many = (impacts("", "", " ".join(["train"] * n + ["x"] * 8))["train"] for n in (1, 2, 20))
    assert once < twice < many < 2 * once * 1.2


def test_prefix_lists_hold_the_best_completion():
    found = {"train": 5.0, "trail": 7.0, "tr": 9.0, "night": 1.0}
    assert prefix_impacts(found) == {"*tr": 7.0, "*tra": 7.0, "*ni": 1.0, "*nig": 1.0}
    assert prefix_key("t") is None and prefix_key("tr") == "*tr" and prefix_key("trai") == "*tra"


def test_idf_falls_with_the_documents_and_stays_positive():
    assert idf(1, 1000) > idf(10, 1000) > idf(999, 1000) > 0
    assert idf(5000, 1000) == idf(1000, 1000) > 0


def test_top_k_ties_go_to_the_newest():
    top = TopK(k=2)
    for tid, s in ((1, 3.0), (2, 5.0), (3, 3.0)):
        top.offer(tid, s)
    assert top.ranked() == [(2, 5.0), (3, 3.0), (1, 3.0)]
    assert top.kth() == 3.0 and TopK(k=4).kth() is None
    assert top.page() == [(2, 5.0), (3, 3.0)]
    top.offer(4, 4.0)
    assert top.kth() == 4.0 and top.page() == [(2, 5.0), (4, 4.0)]
