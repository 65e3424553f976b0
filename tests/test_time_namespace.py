"""linux.timeOffsets: the offsets of the container's new time namespace, as the kernel reports them."""

from __future__ import annotations

from pathlib import Path

from harness import Bundle, Runner


def test_time_offsets_of_a_new_time_namespace(runner: Runner, bundle: Bundle) -> None:
    """Rootless too: the offsets are written in a user namespace of the container's own."""
    bundle.add_namespace("time")
    bundle.linux["timeOffsets"] = {"monotonic": {"secs": 86400, "nanosecs": 5},
                                   "boottime": {"secs": 172800, "nanosecs": 0}}
    bundle.sh("cat /proc/uptime; sleep 1000")
    cid = runner.new_id()
    runner.create(cid, bundle).ok()
    pid = runner.state(cid)["pid"]
    lines = Path(f"/proc/{pid}/timens_offsets").read_text().splitlines()
    offsets = {line.split()[0]: line.split()[1:] for line in lines}
    assert offsets == {"monotonic": ["86400", "5"], "boottime": ["172800", "0"]}, offsets
    runner.delete(cid, "--force").ok()
