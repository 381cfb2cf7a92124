"""Failure domains: placement never stacks more of a stripe on one zone, rack or host than the
layout forces, and the loss analysis says what one zone, rack, host or node costs."""

from collections import Counter

import pytest
from headwater.objstore.placement import (
    LEVELS,
    NodeSite,
    PlacementError,
    analyse,
    place,
    placement_warnings,
)


def layout(hosts: int, per_host: int, racks: int = 1, zones: int = 1) -> list[NodeSite]:
    """``hosts`` hosts of ``per_host`` nodes; host h sits in rack h % racks and zone h % zones."""
    return [NodeSite(id=f"s{h}-{i}", host=f"h{h}", rack=f"r{h % racks}", zone=f"z{h % zones}")
            for h in range(hosts) for i in range(per_host)]


def per_host(chosen: list[str], nodes: list[NodeSite]) -> Counter:
    host = {n.id: n.host for n in nodes}
    return Counter(host[c] for c in chosen)


def test_overflow_is_spread_not_stacked_on_one_host():
    # 3 hosts of 4 nodes, 6 fragments: 2 per host always (the old round-then-any rule could put
    # 4 on one host once every host had one).
    nodes = layout(3, 4)
    for i in range(300):
        assert sorted(per_host(place(f"o{i}", 6, nodes), nodes).values()) == [2, 2, 2]


def test_zones_then_racks_then_hosts():
    # 2 zones x 2 racks x 2 hosts x 2 nodes; 8 fragments: 4 per zone, 2 per rack, 1 per host.
    nodes = [NodeSite(id=f"{z}{r}{h}{i}", zone=f"z{z}", rack=f"r{r}", host=f"h{z}{r}{h}")
             for z in range(2) for r in range(2) for h in range(2) for i in range(2)]
    for i in range(100):
        chosen = [n for n in nodes if n.id in place(f"x{i}", 8, nodes)]
        assert set(Counter(n.zone for n in chosen).values()) == {4}
        assert set(Counter((n.zone, n.rack) for n in chosen).values()) == {2}
        assert set(Counter(n.host for n in chosen).values()) == {1}


def test_down_nodes_still_spread_over_the_rest():
    nodes = layout(3, 2)
    chosen = place("y", 3, nodes, down={"s0-0", "s0-1"})
    assert len(chosen) == 3 and not {"s0-0", "s0-1"} & set(chosen)
    assert sorted(per_host(chosen, nodes).values()) == [1, 2]


def test_4_plus_2_on_3_hosts_warns_about_a_host():
    loss = {d.level: d for d in analyse(layout(3, 2), k=4, m=2, write_quorum=5)}
    host = loss["host"]
    assert (host.domains, host.fragments_lost, host.nodes_left) == (3, 2, 4)
    assert host.readable and host.spare == 0 and not host.writable and host.unsafe
    assert "2 of 6 fragments" in host.cost() and "writes stop" in host.cost()
    # one zone and one rack: their loss costs everything, but the layout cannot do better, so
    # they are stated, not warned about
    assert loss["zone"].fragments_lost == 6 and loss["zone"].domains == 1 and not loss["zone"].unsafe
    assert "all 6 fragments" in loss["rack"].cost()
    assert loss["node"].fragments_lost == 1 and not loss["node"].unsafe
    warnings = placement_warnings(list(loss.values()), k=4, m=2)
    assert len(warnings) == 1 and warnings[0].startswith("EC 4+2 on 3 hosts: host loss")


def test_one_fragment_per_host_is_safe():
    losses = analyse(layout(6, 1), k=4, m=2, write_quorum=5)
    assert [d.level for d in losses] == list(LEVELS)
    host = losses[2]
    assert host.fragments_lost == 1 and host.spare == 1 and host.writable and not host.unsafe
    assert placement_warnings(losses, k=4, m=2) == []


def test_too_many_fragments_in_one_rack_loses_data():
    # 4 hosts in 2 racks: 6 fragments put 3 in a rack, one more than m.
    losses = {d.level: d for d in analyse(layout(4, 2, racks=2), k=4, m=2, write_quorum=5)}
    rack = losses["rack"]
    assert rack.domains == 2 and rack.fragments_lost == 3 and not rack.readable and rack.unsafe
    assert "unreadable" in rack.cost()


def test_wider_scheme_with_spare_parity_is_fine_per_host():
    # 8+4 on 6 hosts of 2: a host holds 2, two short of m.
    host = {d.level: d for d in analyse(layout(6, 2), k=8, m=4, write_quorum=9)}["host"]
    assert host.fragments_lost == 2 and host.spare == 2 and host.writable and not host.unsafe


def test_write_quorum_decides_whether_writes_go_on():
    strict = {d.level: d for d in analyse(layout(3, 2), k=2, m=2, write_quorum=4)}["host"]
    assert strict.nodes_left == 4 and strict.writable
    assert not {d.level: d for d in analyse(layout(3, 1), k=2, m=1, write_quorum=3)}["host"].writable
    assert {d.level: d for d in analyse(layout(3, 1), k=2, m=1, write_quorum=2)}["host"].writable


def test_no_parity_means_any_loss_loses_data():
    node = analyse(layout(4, 1), k=4, m=0, write_quorum=4)[-1]
    assert not node.readable and node.unsafe


def test_too_few_nodes_for_the_scheme():
    with pytest.raises(PlacementError):
        analyse(layout(2, 2), k=4, m=2, write_quorum=5)


# --- write quorum in cluster.toml ------------------------------------------------------------------

from headwater.objstore.config import ErasureScheme
from headwater.objstore.datapath import write_quorum  # noqa: E402

from headwater.config import ConfigError, loads  # noqa: E402

EC_TOML = """
[objstore.ec]
k = 4
m = 2
{extra}

[objstore.bucket_ec.same]
stripe_size = "4MiB"

[objstore.bucket_ec.wide]
k = 8
m = 4
"""


def test_write_quorum_defaults_to_k_plus_one():
    assert ErasureScheme(k=4, m=2).write_fragments == 5
    assert ErasureScheme(k=4, m=0).write_fragments == 4
    cfg = loads(EC_TOML.format(extra=""))
    assert write_quorum(cfg.objstore.ec) == 5 and cfg.objstore.ec.write_quorum is None
    assert cfg.objstore.scheme_for("wide").write_fragments == 9


def test_write_quorum_is_configurable_and_inherited_only_by_the_same_scheme():
    cfg = loads(EC_TOML.format(extra="write_quorum = 6"))
    assert write_quorum(cfg.objstore.ec) == 6
    assert cfg.objstore.scheme_for("same").write_fragments == 6   # same k+m: inherited
    assert cfg.objstore.scheme_for("wide").write_fragments == 9   # 8+4: its own default


@pytest.mark.parametrize("value", [3, 7, '"5"', "true"])
def test_bad_write_quorum_names_the_key_and_line(value):
    with pytest.raises(ConfigError) as e:
        loads(EC_TOML.format(extra=f"write_quorum = {value}"), path="c.toml")
    assert e.value.key == "objstore.ec.write_quorum" and e.value.line == 5


def test_status_report_warns_for_4_plus_2_on_3_hosts():
    from headwater.objstore.status import failure_domain_report

    nodes = "\n".join(f'[[storage]]\nid = "s{i}"\nport = {9100 + i}\nadmin_port = {9200 + i}\nnode_host = "h{i // 2}"\n'
                      for i in range(6))
    lines, warnings = failure_domain_report(loads(EC_TOML.format(extra="") + nodes))
    assert any("6 storage nodes, 3 hosts, 1 rack, 1 zone" in line for line in lines)
    assert any(line.strip().startswith("host loss (h") and "2 of 6" in line for line in lines)
    # the 4+2 default and the 8+4 bucket (which cannot be placed at all on 6 nodes) both speak up
    assert any(w.startswith("EC 4+2 on 3 hosts: host loss") and "writes stop" in w for w in warnings)
    assert any("EC 8+4 needs 12 storage nodes" in w for w in warnings)
