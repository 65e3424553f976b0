"""Every error path: clear message (pyouki), non-zero exit, and nothing left behind."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from harness import Bundle, Runner, RuntimeInfo, assert_failed_cleanly, mountinfo_lines, read_json_log


@contextmanager
def nothing_left(runner: Runner) -> Iterator[None]:
    """Assert that the block leaves no state entry, no marked process and no new mount."""
    before = mountinfo_lines()
    yield
    # a failed runtime may still be tearing down its helpers: give them a moment to exit
    deadline = time.monotonic() + 5
    while runner.leftover_pids() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert runner.leftover_pids() == [], "processes left behind"
    assert runner.state_entries() == [], "state left behind"
    new = sorted(line for line in mountinfo_lines() - before if str(runner.workdir) in line)
    assert new == [], f"mounts left behind: {new}"


def create_fails(runtime: RuntimeInfo, runner: Runner, bundle: Bundle, *fragments: str,
                 also_run: bool = True) -> None:
    """``create`` (and ``run``) of ``bundle`` must fail cleanly and name ``fragments``."""
    with nothing_left(runner):
        r = runner.create(runner.new_id(), bundle)
        assert_failed_cleanly(runtime, r, *fragments)
    if also_run:
        with nothing_left(runner):
            r = runner.run(runner.new_id(), bundle)
            assert_failed_cleanly(runtime, r, *fragments)


def test_bad_json(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    bundle.config_path.write_text("{ this is not json")
    create_fails(runtime, runner, bundle, "config.json")


def test_missing_config(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    bundle.config_path.unlink()
    create_fails(runtime, runner, bundle, "config.json")


def test_missing_bundle_dir(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    gone = Bundle(path=runner.workdir / "no-such-bundle", config=bundle.config)
    create_fails(runtime, runner, gone, "no-such-bundle")


def test_missing_rootfs(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    bundle.config["root"]["path"] = "no-such-rootfs"
    bundle.write()
    create_fails(runtime, runner, bundle, "root.path")


@pytest.mark.parametrize("args0", ["no-such-cmd", "/bin/no-such-cmd", "runc"])
def test_unknown_executable(runtime: RuntimeInfo, runner: Runner, bundle: Bundle, args0: str) -> None:
    # "runc" exists on the host's PATH but not in the container: it must not be found
    bundle.set_args(args0, "x")
    create_fails(runtime, runner, bundle, "process.args[0]", args0)


def test_not_executable(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    bundle.set_args("/etc/passwd")
    create_fails(runtime, runner, bundle, "process.args[0]")


def test_empty_args(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    bundle.set_args()
    create_fails(runtime, runner, bundle, "process.args")


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("process", "args"), "true", "process.args"),
        (("process", "user", "uid"), "zero", "process.user.uid"),
        (("process", "env"), {"A": "b"}, "process.env"),
        (("root",), "rootfs", "root"),
    ],
)
def test_bad_field_type(
    runtime: RuntimeInfo, runner: Runner, bundle: Bundle, path: tuple[str, ...], value: Any, named: str
) -> None:
    node: dict[str, Any] = bundle.config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    bundle.write()
    create_fails(runtime, runner, bundle, named)


def test_mount_of_unknown_fs_type(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    idx = bundle.add_mount("/mnt/bad", "nosuchfs", "none", [])
    bundle.write()
    create_fails(runtime, runner, bundle, f"mounts[{idx}]")


def test_bind_mount_missing_source(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    idx = bundle.add_mount("/mnt/bad", "bind", str(runner.workdir / "no-such-source"), ["bind"])
    bundle.write()
    create_fails(runtime, runner, bundle, f"mounts[{idx}]")


def test_mount_failing_after_earlier_mounts(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    # earlier mounts succeed inside the child, then one fails: none may leak to the host
    src = runner.workdir / "ok-src"
    src.mkdir()
    bundle.add_mount("/mnt/ok", "bind", str(src), ["rbind"])
    bundle.add_mount("/mnt/t", "tmpfs", "tmpfs", [])
    idx = bundle.add_mount("/mnt/bad", "nosuchfs", "none", [])
    bundle.write()
    create_fails(runtime, runner, bundle, f"mounts[{idx}]")


def test_bad_cwd(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    bundle.process["cwd"] = "relative/dir"
    bundle.write()
    create_fails(runtime, runner, bundle, "process.cwd")


@pytest.mark.parametrize("verb", ["start", "state", "kill", "delete"])
def test_unknown_container(runtime: RuntimeInfo, runner: Runner, verb: str) -> None:
    cid = runner.new_id("ghost")
    with nothing_left(runner):
        r = runner.cmd(verb, cid)
        assert_failed_cleanly(runtime, r, cid)


def test_duplicate_id(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    cid = runner.new_id()
    runner.create(cid, bundle).ok()
    pid = runner.state(cid)["pid"]
    r = runner.create(cid, bundle)
    assert_failed_cleanly(runtime, r, cid)
    st = runner.state(cid)
    assert (st["status"], st["pid"]) == ("created", pid), "the first container must be intact"
    runner.delete(cid).ok()
    assert runner.state_entries() == []


def test_bad_signal(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    bundle.sh("sleep 1000")
    cid = runner.new_id()
    runner.run(cid, bundle, "-d").ok()
    r = runner.kill(cid, "SIGNOTASIGNAL")
    assert_failed_cleanly(runtime, r, "SIGNOTASIGNAL")
    assert runner.status(cid) == "running"
    runner.delete(cid, "--force").ok()


def test_error_goes_to_json_log(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    bundle.set_args("no-such-cmd")
    log = runner.rundir / "error.log"
    with nothing_left(runner):
        r = runner.cmd("--log", str(log), "--log-format", "json", "create", "--bundle",
                       str(bundle.path), runner.new_id())
        assert_failed_cleanly(runtime, r, "process.args[0]")
    errors = [e for e in read_json_log(log) if e.get("level") == "error"]
    assert errors, f"no error entry in {log.read_text() if log.exists() else 'missing log'}"
    assert all("time" in e and "msg" in e for e in errors)
    if runtime.is_pyouki:
        line = r.stderr.strip()
        assert errors[-1]["msg"] == line[len("pyouki: "):]


def test_error_goes_to_text_log(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    bundle.config_path.write_text("[]")
    log = runner.rundir / "error.txt"
    r = runner.cmd("--log", str(log), "create", "--bundle", str(bundle.path), runner.new_id())
    assert_failed_cleanly(runtime, r, "config.json")
    assert log.exists() and log.read_text().strip(), "the text log must record the error"
    assert runner.state_entries() == []


def test_failed_create_keeps_other_containers(runner: Runner, make_bundle: Callable[..., Bundle]) -> None:
    good = make_bundle("good")
    bad = make_bundle("bad", args=("no-such-cmd",))
    cid = runner.new_id()
    runner.create(cid, good).ok()
    assert runner.create(runner.new_id(), bad).returncode != 0
    assert runner.state_entries() == [cid]
    assert runner.status(cid) == "created"
    runner.delete(cid).ok()


def test_spec_refuses_existing_config(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    before = bundle.config_path.read_text()
    args = ["spec", "--rootless"] if runner.rootless else ["spec"]
    r = runner.cmd(*args, "--bundle", str(bundle.path), root=None)
    assert_failed_cleanly(runtime, r, "config.json")
    assert bundle.config_path.read_text() == before
    json.loads(before)


def test_log_file_unwritable(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    r = runner.cmd("--log", "/proc/no/such/log", "create", "--bundle", str(bundle.path), runner.new_id())
    assert r.returncode != 0
    assert runner.state_entries() == []
    assert not os.path.exists("/proc/no/such/log")
