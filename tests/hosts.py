"""Several "hosts" on one machine, for probe tests that lose a whole host.

``SimulatedHosts(n)`` gives each host its own address, and a way to cut it off the network and
bring it back. Two modes, chosen once, reported by ``mode`` and ``describe()``:

- ``"netns"``: each host is a network namespace (``ip netns``) with one veth pair into a bridge
  in the test's own namespace, on a private /24; the bridge end of a host's veth going down cuts
  the host off (its packets are dropped, so peers see silence, not refused connections).
- ``"loopback"``: where namespaces cannot be made (no root, no ``ip``, a locked-down container),
  each host is an address 127.0.N.x on ``lo``. The cut stops the host's processes (SIGSTOP: a
  hung host, nothing goes out) and, when iptables works, also drops every packet to its
  address (so new connections get no SYN-ACK either). A DROP alone is not enough on ``lo``:
  outgoing connections leave from 127.0.0.1 whatever address the daemon listens on, so a cut
  leader would go on sending heartbeats. ``cut_mechanism`` says which ran.

Set ``HEADWATER_TEST_HOSTS=loopback`` to force the fallback. Names carry the test process's pid
so concurrent runs on one machine do not meet; ``close()`` removes everything made.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
from typing import Callable, Iterable

__all__ = ["SimulatedHosts"]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15)
    if check and r.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {r.stderr.strip() or r.returncode}")
    return r


class SimulatedHosts:
    """``n`` hosts, each with an address the daemons bind; host indexes are 0-based."""

    def __init__(self, n: int, *, force: str | None = None):
        self.n = n
        self.tag = f"hw{os.getpid() % 100000}"
        self.mode = ""
        self.cut_mechanism = ""
        self.why_not_netns = ""
        self._made_netns: list[str] = []
        self._bridge: str | None = None
        self._dropped: dict[int, list[list[str]]] = {}
        self._stopped: dict[int, list[int]] = {}
        self._iptables = False
        self.addresses: list[str] = []
        force = force or os.environ.get("HEADWATER_TEST_HOSTS")
        if force != "loopback":
            try:
                self._make_netns()
                self.mode, self.cut_mechanism = "netns", "veth link down"
                return
            except (OSError, subprocess.SubprocessError) as e:
                self.why_not_netns = str(e)[:300]
                self._remove_netns()
        else:
            self.why_not_netns = "HEADWATER_TEST_HOSTS=loopback"
        self._make_loopback()

    # --- setup -----------------------------------------------------------------------------------

    def _free_subnet(self) -> str:
        routes = _ip("-4", "route", "show", "table", "all", check=False).stdout
        addrs = _ip("-4", "addr", check=False).stdout
        rng = random.Random()
        for _ in range(200):
            net = f"10.{rng.randrange(200, 250)}.{rng.randrange(1, 255)}"
            if f"{net}." not in routes and f"{net}." not in addrs:
                return net
        raise OSError("no free 10.x.y.0/24 for the test hosts")

    def _make_netns(self) -> None:
        if shutil.which("ip") is None:
            raise OSError("the `ip` command (iproute2) is missing")
        net = self._free_subnet()
        bridge = f"{self.tag}br"
        _ip("link", "add", bridge, "type", "bridge")
        self._bridge = bridge
        _ip("addr", "add", f"{net}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i in range(self.n):
            ns, outer, inner = self.netns(i, _mode="netns"), f"{self.tag}h{i}", f"{self.tag}p{i}"
            _ip("netns", "add", ns)
            self._made_netns.append(ns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "master", bridge, "up")
            addr = f"{net}.{10 + i}"
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            self.addresses.append(addr)

    def _make_loopback(self) -> None:
        self.mode = "loopback"
        block = random.Random().randrange(20, 250)
        self.addresses = [f"127.0.{block}.{10 + i}" for i in range(self.n)]
        ok = shutil.which("iptables") is not None and subprocess.run(
            ["iptables", "-L", "INPUT", "-n"], capture_output=True, timeout=15).returncode == 0
        self._iptables = ok
        self.cut_mechanism = ("SIGSTOP of the host's daemons + iptables DROP of its address" if ok
                              else "SIGSTOP of the host's daemons")

    # --- queries ---------------------------------------------------------------------------------

    def netns(self, i: int, *, _mode: str | None = None) -> str | None:
        """The network namespace of host ``i`` (None in loopback mode)."""
        if (_mode or self.mode) != "netns":
            return None
        return f"{self.tag}-host{i}"

    def describe(self) -> str:
        if self.mode == "netns":
            return (f"netns: {self.n} network namespaces bridged on {self.addresses[0].rsplit('.', 1)[0]}.0/24, "
                    f"cut by {self.cut_mechanism}")
        return (f"loopback: {self.n} addresses {', '.join(self.addresses)}, cut by {self.cut_mechanism} "
                f"(no namespaces: {self.why_not_netns})")

    # --- faults ----------------------------------------------------------------------------------

    def cut(self, i: int, pids: Callable[[], Iterable[int]] = lambda: ()) -> None:
        """Cut host ``i`` off; ``pids`` lists its processes (stopped in loopback mode only)."""
        if self.mode == "netns":
            _ip("link", "set", f"{self.tag}h{i}", "down")
            return
        if self._iptables:
            rules = [["INPUT", "-d", self.addresses[i], "-j", "DROP"]]
            for rule in rules:
                subprocess.run(["iptables", "-I", *rule], check=True, capture_output=True, timeout=15)
            self._dropped[i] = rules
        stopped = list(pids())
        for pid in stopped:
            os.killpg(pid, signal.SIGSTOP)
        self._stopped[i] = stopped

    def heal(self, i: int) -> None:
        """Bring host ``i`` back on the network."""
        if self.mode == "netns":
            _ip("link", "set", f"{self.tag}h{i}", "up")
        for rule in self._dropped.pop(i, []):
            subprocess.run(["iptables", "-D", *rule], capture_output=True, timeout=15)
        for pid in self._stopped.pop(i, []):
            try:
                os.killpg(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    # --- teardown --------------------------------------------------------------------------------

    def _remove_netns(self) -> None:
        for i, ns in enumerate(self._made_netns):
            # The pair goes with either end. Deleted here rather than with the namespace: a
            # namespace outlives its name while orphaned sockets of killed daemons linger in it.
            _ip("link", "del", f"{self.tag}h{i}", check=False)
            _ip("netns", "del", ns, check=False)
        self._made_netns.clear()
        if self._bridge:
            _ip("link", "del", self._bridge, check=False)
            self._bridge = None

    def close(self) -> None:
        """Heal every cut host and remove the namespaces and bridge (call after the daemons stop)."""
        for i in list(self._dropped) + list(self._stopped):
            self.heal(i)
        self._remove_netns()

    def __enter__(self) -> SimulatedHosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
