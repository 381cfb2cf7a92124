"""ListWalk folding a sorted key stream into S3 listing pages, against a brute-force model."""

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.objstore.gateway.listing import list_page


def model(keys, prefix, delimiter, start_after, max_keys):
    items = []
    for k in sorted(set(keys)):
        if not k.startswith(prefix):
            continue
        if delimiter and (cut := k.find(delimiter, len(prefix))) >= 0:
            item = ("p", k[: cut + len(delimiter)])
        else:
            item = ("k", k)
        if item[1] <= start_after and not (item[0] == "p" and start_after.startswith(item[1]) is False):
            pass
        if items and items[-1] == item:
            continue
        items.append(item)
    # Drop items at or before the marker (a marker inside a common prefix skips that prefix).
    out = []
    for kind, name in items:
        if kind == "k" and name <= start_after:
            continue
        if kind == "p" and (name <= start_after or start_after.startswith(name)):
            continue
        out.append((kind, name))
    return out[:max_keys], max_keys > 0 and len(out) > max_keys


def run(keys, prefix, delimiter, start_after, max_keys, page_size):
    data = sorted(set(keys))

    async def scan(pfx, after, limit):
        return [(k, None) for k in data if k.startswith(pfx) and k > after][:limit]

    return anyio.run(lambda: list_page(scan, prefix=prefix, delimiter=delimiter, start_after=start_after,
                                       max_keys=max_keys, page_size=page_size))


alphabet = st.sampled_from(list("ab/c"))
keys_st = st.lists(st.text(alphabet, min_size=1, max_size=5), max_size=30)


@settings(max_examples=300, deadline=None)
@given(keys=keys_st, prefix=st.text(alphabet, max_size=2), delimiter=st.sampled_from(["", "/", "b"]),
       start_after=st.text(alphabet, max_size=4), max_keys=st.integers(0, 8), page_size=st.integers(1, 5))
def test_page_matches_model(keys, prefix, delimiter, start_after, max_keys, page_size):
    page = run(keys, prefix, delimiter, start_after, max_keys, page_size)
    got = sorted([("k", k) for k, _ in page.contents] + [("p", p) for p in page.prefixes], key=lambda x: x[1])
    want, truncated = model(keys, prefix, delimiter, start_after, max_keys)
    assert got == want
    assert page.truncated == truncated


def test_paging_walks_everything_once():
    keys = [f"v/{i:03d}/seg{j}" for i in range(20) for j in range(3)] + [f"top{i}" for i in range(5)]
    seen, marker = [], ""
    while True:
        page = run(keys, "", "/", marker, 3, 4)
        seen += [k for k, _ in page.contents] + page.prefixes
        if not page.truncated:
            break
        marker = page.last
    assert seen == ["top0", "top1", "top2", "top3", "top4", "v/"] or sorted(seen) == sorted(set(seen))
    assert seen == sorted(seen) and len(seen) == len(set(seen))
