"""The automatic user namespace (issue 11, point 1): a rootful-style config (`pyouki spec`, no user
namespace) run by the unprivileged user gets a user namespace mapping the caller to 0, as with crun.

runc refuses such a config, so these tests are pyouki's own.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness import Bundle, Runner, RuntimeInfo, assert_failed_cleanly, read_json_log, wait_pid_gone

pytestmark = [pytest.mark.parametrize("mode", ["rootless"]), pytest.mark.rootless]

ANNOTATION = "run.pyouki.userns"


@pytest.fixture
def rootful_bundle(runtime: RuntimeInfo, runner: Runner, make_bundle: Callable[..., Bundle]) -> Bundle:
    """A bundle owned by the user whose config is the runtime's plain `spec` (no user namespace)."""
    if not runtime.is_pyouki:
        pytest.skip("runc refuses a rootless config without a user namespace")
    b = make_bundle()
    d = runner.workdir / "rootful-spec"
    d.mkdir()
    os.chown(d, runner.user.uid, runner.user.gid)
    runner.cmd("spec", root=None, cwd=d).ok()
    config = json.loads((d / "config.json").read_text())
    shutil.rmtree(d)
    assert "user" not in [ns["type"] for ns in config["linux"]["namespaces"]]
    assert "uidMappings" not in config["linux"]
    config["process"]["terminal"] = False
    config["process"]["env"] = b.config["process"]["env"]  # keeps the leftover marker
    config["root"] = {"path": "rootfs", "readonly": False}
    b.config = config
    b.write()
    return b


def _run_output(runner: Runner, bundle: Bundle, script: str, *global_args: str) -> str:
    out = runner.workdir / f"out-{time.monotonic_ns()}"
    bundle.sh(script)
    res = runner.cmd(*global_args, "run", "--bundle", str(bundle.path), runner.new_id(), stdout=out)
    text = out.read_text()
    assert res.returncode == 0, f"{res}\ncontainer output: {text}"
    return text


def _map_lines(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


def test_rootful_spec_runs_as_root_inside(runner: Runner, rootful_bundle: Bundle) -> None:
    out = _run_output(runner, rootful_bundle, "id -u; id -g; echo ---; cat /proc/self/uid_map; echo ---; "
                                              "cat /proc/self/gid_map; echo ---; cat /proc/self/setgroups")
    ids, uid_map, gid_map, setgroups = out.split("---\n")
    assert ids.split() == ["0", "0"]
    assert _map_lines(uid_map) == [["0", str(runner.user.uid), "1"]]
    assert _map_lines(gid_map) == [["0", str(runner.user.gid), "1"]]
    assert setgroups.strip() == "deny"


def test_rootful_spec_mounts_and_devices(runner: Runner, rootful_bundle: Bundle) -> None:
    """devpts without the unmapped gid=5, sysfs mounted, device nodes bound from the host."""
    out = _run_output(runner, rootful_bundle, "grep -E ' /dev/pts | /sys ' /proc/self/mounts; "
                                              "echo x > /dev/null && echo null-ok; head -c 4 /dev/zero | wc -c")
    lines = out.splitlines()
    devpts = next(line for line in lines if " /dev/pts " in line)
    assert "gid=" not in devpts
    assert any(" /sys sysfs " in line for line in lines), out
    assert "null-ok" in lines
    assert lines[-1].strip() == "4"


def test_exec_kill_delete(runner: Runner, rootful_bundle: Bundle) -> None:
    rootful_bundle.sh("sleep 1000")
    cid = runner.new_id()
    runner.create(cid, rootful_bundle).ok()
    runner.start(cid).ok()
    state = runner.state(cid)
    assert state["status"] == "running"
    pid = int(state["pid"])
    # the container's init is the caller's uid on the host, root inside
    host_uid = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0]
    assert host_uid == str(runner.user.uid)
    out = runner.workdir / "exec-out"
    runner.cmd("exec", cid, "sh", "-c", "id -u; cat /proc/self/uid_map", stdout=out).ok()
    lines = out.read_text().splitlines()
    assert lines[0] == "0"
    assert lines[1].split() == ["0", str(runner.user.uid), "1"]
    runner.kill(cid, "KILL").ok()
    assert wait_pid_gone(pid)
    assert runner.wait_status(cid, "stopped") == "stopped"
    runner.delete(cid).ok()
    assert runner.status(cid) is None
    assert runner.state_entries() == []


def test_debug_log_says_so(runner: Runner, rootful_bundle: Bundle) -> None:
    log = runner.rundir / "log.json"  # the user's own directory
    _run_output(runner, rootful_bundle, "true", "--log", str(log), "--log-format", "json", "--log-level", "debug")
    messages = [e["msg"] for e in read_json_log(log)]
    added = [m for m in messages if "adding one that maps uid" in m]
    assert added and f"uid {runner.user.uid} and gid {runner.user.gid} to 0" in added[0], messages
    assert any("dropping 'gid=5'" in m for m in messages), messages


def test_full_range_by_annotation(runner: Runner, rootful_bundle: Bundle) -> None:
    rootful_bundle.config["annotations"] = {ANNOTATION: "full"}
    out = _run_output(runner, rootful_bundle, "cat /proc/self/uid_map; echo ---; cat /proc/self/gid_map; "
                                              "echo ---; grep ' /dev/pts ' /proc/self/mounts")
    uid_map, gid_map, devpts = out.split("---\n")
    sub_start, sub_size = runner.user.subuid
    assert _map_lines(uid_map) == [["0", str(runner.user.uid), "1"], ["1", str(sub_start), str(sub_size)]]
    gsub_start, gsub_size = runner.user.subgid
    assert _map_lines(gid_map) == [["0", str(runner.user.gid), "1"], ["1", str(gsub_start), str(gsub_size)]]
    assert f"gid={gsub_start + 4}" in devpts  # gid 5 is mapped now: the spec's option is kept


def test_full_range_by_environment(runner: Runner, rootful_bundle: Bundle) -> None:
    rootful_bundle.process["user"] = {"uid": 1000, "gid": 1000}
    rootful_bundle.sh("id -u; id -g")
    out = runner.workdir / "out"
    env: dict[str, Any] = dict(runner.env(), PYOUKI_USERNS="full")
    runner.cmd("run", "--bundle", str(rootful_bundle.path), runner.new_id(), stdout=out, env=env).ok()
    assert out.read_text().split() == ["1000", "1000"]


def test_unmapped_process_user_names_the_way_out(runtime: RuntimeInfo, runner: Runner,
                                                 rootful_bundle: Bundle) -> None:
    rootful_bundle.process["user"] = {"uid": 1000, "gid": 0}
    rootful_bundle.write()
    res = runner.create(runner.new_id(), rootful_bundle)
    assert_failed_cleanly(runtime, res, "process.user.uid", f"{ANNOTATION}=full")
    assert runner.state_entries() == []


@pytest.mark.parametrize("where", ["annotation", "environment"])
def test_off_keeps_the_refusal(runtime: RuntimeInfo, runner: Runner, rootful_bundle: Bundle, where: str) -> None:
    env = runner.env()
    if where == "annotation":
        rootful_bundle.config["annotations"] = {ANNOTATION: "off"}
        rootful_bundle.write()
    else:
        env["PYOUKI_USERNS"] = "off"
    res = runner.create(runner.new_id(), rootful_bundle, env=env)
    assert_failed_cleanly(runtime, res, "linux.namespaces", "needs a user namespace")
    assert runner.state_entries() == []


def test_unknown_mode_is_refused(runtime: RuntimeInfo, runner: Runner, rootful_bundle: Bundle) -> None:
    rootful_bundle.config["annotations"] = {ANNOTATION: "everything"}
    rootful_bundle.write()
    res = runner.create(runner.new_id(), rootful_bundle)
    assert_failed_cleanly(runtime, res, f"annotations.{ANNOTATION}", "everything")
    assert runner.state_entries() == []


def test_mappings_without_a_user_namespace_are_not_replaced(runtime: RuntimeInfo, runner: Runner,
                                                            rootful_bundle: Bundle) -> None:
    rootful_bundle.linux["uidMappings"] = [{"containerID": 0, "hostID": runner.user.uid, "size": 1}]
    rootful_bundle.write()
    res = runner.create(runner.new_id(), rootful_bundle)
    assert_failed_cleanly(runtime, res, "linux.uidMappings", "need a user namespace")
    assert runner.state_entries() == []
