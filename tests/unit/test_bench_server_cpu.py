"""The objstore bench's CPU accounting: what the store's processes spend per batch, by role."""

import os
import subprocess
import sys

from headwater.bench.load import ServerCpu, cpu_seconds, server_cpu_text
from headwater.bench.peers import _node_id


def test_large_objects_per_gb_small_ones_per_request():
    seconds = {"gateway": 0.5, "storage": 0.25}
    assert server_cpu_text(seconds, object_bytes=64 * 2**20, ops=4) == (
        "server 2.79 s/GB (gateway 1.86, storage 0.93)")
    assert server_cpu_text(seconds, object_bytes=4096, ops=500) == "server 1.50 ms/op (gateway 1.00, storage 0.50)"
    assert server_cpu_text(seconds, object_bytes=0, ops=250) == "server 3.00 ms/op (gateway 2.00, storage 1.00)"
    assert server_cpu_text({}, object_bytes=4096, ops=10) == ""
    assert server_cpu_text(seconds, object_bytes=4096, ops=0) == ""


def test_a_busy_process_is_counted_under_its_role_and_a_gone_one_is_not():
    # Told to go, burns 0.3 s of CPU, says so, then idles until killed (a daemon between
    # batches). It waits for the word so that all its burning falls after ServerCpu's baseline,
    # however the scheduler orders the processes on a loaded machine.
    busy = subprocess.Popen([sys.executable, "-c", "import sys, time\nsys.stdin.readline()\n"
                             "t = time.process_time()\n"
                             "while time.process_time() - t < 0.3: pass\nprint(flush=True)\ntime.sleep(60)"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        with ServerCpu(lambda: {"gateway": [busy.pid], "storage": [gone.pid]}) as cpu:
            assert busy.stdin is not None and busy.stdout is not None
            busy.stdin.write(b"go\n")
            busy.stdin.flush()
            assert busy.stdout.readline() == b"\n"
    finally:
        busy.kill()
        busy.wait()
    assert set(cpu.seconds) == {"gateway"} and 0.2 <= cpu.seconds["gateway"] < 5
    assert cpu_seconds(gone.pid) is None
    assert (cpu_seconds(os.getpid()) or 0) > 0


def test_node_ids_from_command_lines():
    assert _node_id(["/venv/bin/python", "-m", "headwater", "node", "storage-3", "-c", "x.toml"]) == "storage-3"
    assert _node_id(["python", "-m", "headwater", "up", "-c", "x.toml"]) is None
    assert _node_id(["python", "-m", "headwater", "node"]) is None


def test_the_report_puts_each_store_s_cpu_per_unit_side_by_side():
    from headwater.bench import objstore

    mib = 2**20
    ours = {"put_big_1": {"ops": 8, "errors": 0, "object_bytes": 64 * mib,
                          "server_cpu_s": {"gateway": 2.0, "storage": 1.0}},
            "head_small": {"ops": 2000, "errors": 0, "object_bytes": 0,
                           "server_cpu_s": {"gateway": 2.0, "metadata": 4.0}}}
    swift = {"put_big_1": {"ops": 8, "errors": 0, "object_bytes": 64 * mib, "server_cpu_s": {"proxy": 6.0}},
             "head_small": {"ops": 2000, "errors": 1000, "object_bytes": 0, "server_cpu_s": {"proxy": 1.5}}}
    assert objstore.server_cpu_per_unit(ours["put_big_1"])[:2] == (3.0 * 1e9 / (8 * 64 * mib), "s/GB")
    assert objstore.server_cpu_per_unit(ours["head_small"])[:2] == (3.0, "ms/op")
    assert objstore.server_cpu_per_unit(swift["head_small"])[0] == 1.5  # failed requests do not count
    assert objstore.server_cpu_per_unit({"ops": 5, "object_bytes": 0}) is None
    text = objstore.render_server_cpu({"targets": {"ours": {"results": ours}, "swift": {"results": swift}}})
    lines = {line.split(" (server")[0]: line for line in text.splitlines()[2:]}
    assert "5.59" in lines["PUT 64 MiB, 1 client"] and "11.18" in lines["PUT 64 MiB, 1 client"]
    assert "0.50x" in lines["PUT 64 MiB, 1 client"] and "gateway 3.73, storage 1.86" in lines["PUT 64 MiB, 1 client"]
    assert "2.00x" in lines["HEAD 4 KiB, 32 clients"] and "(server ms/op)" in lines["HEAD 4 KiB, 32 clients"]
    assert objstore.render_server_cpu({"targets": {"ours": {"results": {}}}}) == ""


def test_what_the_store_spends_idle_is_taken_out_of_each_request():
    # At a few hundred requests a second, heartbeats and health checks are a good share of a
    # request's figure, more of it the slower the batch: net of idle, a slow batch of the same
    # requests costs what a fast one does.
    from headwater.bench import objstore

    idle = {"seconds": 3.0, "server_cpu_s": {"gateway": 0.03, "metadata": 0.3}}
    fast = {"ops": 2000, "errors": 0, "object_bytes": 4096, "seconds": 2.0,
            "server_cpu_s": {"gateway": 1.02, "metadata": 1.2}}
    slow = {**fast, "seconds": 4.0, "server_cpu_s": {"gateway": 1.04, "metadata": 1.4}}
    assert objstore.server_cpu_per_unit(fast)[0] < objstore.server_cpu_per_unit(slow)[0]
    net_fast = objstore.server_cpu_per_unit(fast, idle=idle)
    net_slow = objstore.server_cpu_per_unit(slow, idle=idle)
    assert abs(net_fast[0] - 1.0) < 1e-9 and abs(net_slow[0] - 1.0) < 1e-9
    assert abs(net_slow[2]["metadata"] - 0.5) < 1e-9
    doc = {"targets": {"ours": {"results": {"get_small": fast, "head_small": slow, "idle": idle}},
                       "swift": {"results": {"get_small": fast}}}}
    lines = {line.split(" (server")[0]: line for line in objstore.render_server_cpu(doc).splitlines()[2:]}
    assert "1.00 / -" in lines["HEAD 4 KiB, 32 clients"] and "1.00 / -" in lines["GET 4 KiB, 32 clients"]
