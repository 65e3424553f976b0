"""runc parity for cgroups and a few config fields (issue 9, section C): pids.limit 0, a frozen
cgroupsPath, the cgroup namespace of `spec`, unknown capabilities."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Bundle, Runner, RuntimeInfo, assert_failed_cleanly, proc_status_field, read_json_log

V1_PIDS = Path("/sys/fs/cgroup/pids")
V1_FREEZER = Path("/sys/fs/cgroup/freezer")


@pytest.mark.parametrize("mode", ["root"])
@pytest.mark.parametrize(("limit", "expected"), [(0, "1"), (1, "1"), (7, "7"), (-1, "max")])
def test_pids_limit_same_in_every_driver(runner: Runner, bundle: Bundle, limit: int, expected: str,
                                         xfail_runc: Callable[[str], None]) -> None:
    """0 is a real limit (the spec), written as 1 by the cgroupfs drivers and as TasksMax=1 by
    the systemd one (which refuses 0), as runc 1.2 does; the systemd side is unit-tested in
    test_dbus_messages. A limit of 1 (or 0) still lets the container start: the limit is
    written once init is alone in its cgroup (it kept the intermediate from forking init)."""
    if not V1_PIDS.is_dir():
        pytest.skip("needs the cgroup v1 pids hierarchy")
    if limit == 0:
        xfail_runc("runc 1.1.5 leaves a 0 limit unset")
    cid = runner.new_id("pids")
    bundle.linux["cgroupsPath"] = f"/pyt-pids-{cid}"
    bundle.linux["resources"] = {"pids": {"limit": limit}}
    bundle.set_args("sleep", "100")
    runner.create(cid, bundle).ok()
    runner.start(cid).ok()
    assert runner.status(cid) == "running"
    assert (V1_PIDS / f"pyt-pids-{cid}" / "pids.max").read_text().strip() == expected
    runner.delete(cid, "--force").ok()


@pytest.mark.parametrize("mode", ["root"])
def test_frozen_cgroup_refused(runner: Runner, bundle: Bundle, runtime: RuntimeInfo) -> None:
    """A cgroupsPath that exists and is frozen: `run` hung for ever (its first process frozen);
    refused, as runc does, and the cgroup (not pyouki's) is left as it was."""
    if not V1_FREEZER.is_dir():
        pytest.skip("needs the cgroup v1 freezer hierarchy")
    cid = runner.new_id("frozen")
    name = f"pyt-frozen-{cid}"
    frozen = V1_FREEZER / name
    frozen.mkdir()
    try:
        (frozen / "freezer.state").write_text("FROZEN")
        bundle.linux["cgroupsPath"] = f"/{name}"
        bundle.set_args("true")
        res = runner.run(cid, bundle, timeout=30)
        assert_failed_cleanly(runtime, res, "linux.cgroupsPath", "frozen")
        assert runner.state_entries() == []
        assert runner.leftover_pids() == []
        if runtime.is_pyouki:
            assert (frozen / "freezer.state").read_text().strip() == "FROZEN"
            assert not (V1_PIDS / name).exists()  # nothing made in the other hierarchies
    finally:
        if frozen.exists():
            (frozen / "freezer.state").write_text("THAWED")
        runner.cleanup()
        for d in Path("/sys/fs/cgroup").glob(f"*/{name}"):
            d.rmdir()


@pytest.mark.parametrize("mode", ["root", "rootless"])
def test_spec_adds_a_cgroup_namespace_only_on_cgroup_v2(runner: Runner) -> None:
    """As runc: on a v1 (or hybrid) host a cgroup namespace isolates nothing and showed the host's
    hierarchies; on a unified host it is there (rootless: never, unlike runc, see make_rootless)."""
    from pyouki.cgroups import detect_mode

    d = runner.workdir / "spec"
    d.mkdir()
    if runner.owner:
        os.chown(d, *runner.owner)
    args = ["spec", "--rootless"] if runner.rootless else ["spec"]
    runner.cmd(*args, root=None, cwd=d).ok()
    namespaces = [ns["type"] for ns in json.loads((d / "config.json").read_text())["linux"]["namespaces"]]
    assert ("cgroup" in namespaces) is (detect_mode() == "unified" and not runner.rootless)
    assert ("network" in namespaces) is (not runner.rootless)


def test_unknown_capabilities_warn_and_continue(runner: Runner, bundle: Bundle) -> None:
    """The runtime spec: unknown capabilities SHOULD NOT fail the container, and SHOULD be logged;
    runc warns "ignoring unknown or unavailable capabilities" (create failed here). The known
    ones still apply; exec --cap with an unknown one behaves the same."""
    caps = bundle.process["capabilities"]
    for key in ("bounding", "effective", "permitted"):
        caps[key] = [*caps.get(key, []), "CAP_NOT_A_CAP"]
    caps["ambient"] = ["CAP_ALSO_NOT"]
    bundle.set_args("sleep", "100")
    logf = runner.rundir / "log.json"  # the user must be able to write it
    cid = runner.new_id("caps")
    runner.cmd("--log", str(logf), "--log-format", "json", "create", "--bundle", str(bundle.path), cid).ok()
    runner.start(cid).ok()
    pid = int(runner.state(cid)["pid"])
    bnd = int(proc_status_field(pid, "CapBnd") or "0", 16)
    assert bnd == (1 << 5) | (1 << 10) | (1 << 29)  # KILL, NET_BIND_SERVICE, AUDIT_WRITE from the spec
    res = runner.cmd("--log", str(logf), "--log-format", "json", "exec", "--cap", "CAP_BOGUS", cid, "true")
    assert res.returncode == 0, res
    warnings = [e["msg"] for e in read_json_log(logf) if e["level"] in ("warning", "warn")]
    assert "ignoring unknown or unavailable capabilities: [CAP_ALSO_NOT CAP_NOT_A_CAP]" in warnings, warnings
    assert any("CAP_BOGUS" in w for w in warnings), warnings
