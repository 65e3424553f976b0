"""runc's command-line behaviour that engines and scripts rely on, compared on the same bundle."""

from __future__ import annotations

import json

import pytest
from harness import Bundle, Runner

# runc's containerState: the order `state` and `list --format json` print the fields in
RUNC_STATE_KEYS = ["ociVersion", "id", "pid", "status", "bundle", "rootfs", "created", "annotations", "owner"]


def test_kill_signal_zero_is_a_liveness_check(runner: Runner, bundle: Bundle) -> None:
    bundle.sh("sleep 1000")
    cid = runner.new_id()
    runner.run(cid, bundle, "-d").ok()
    assert runner.kill(cid, "0").ok().stderr == ""
    assert runner.status(cid) == "running", "signal 0 must not hurt the container"
    runner.kill(cid, "KILL").ok()
    assert runner.wait_status(cid, "stopped") == "stopped"
    r = runner.kill(cid, "0")
    assert r.returncode == 1 and "container not running" in r.stderr, r
    runner.delete(cid).ok()


def test_exec_runtime_failure_exits_255_and_a_process_exit_status_is_passed_on(runner: Runner,
                                                                               bundle: Bundle) -> None:
    bundle.sh("sleep 1000")
    cid = runner.new_id()
    runner.run(cid, bundle, "-d").ok()
    assert runner.cmd("exec", cid, "sh", "-c", "exit 1").returncode == 1
    assert runner.cmd("exec", cid, "sh", "-c", "exit 255").returncode == 255
    r = runner.cmd("exec", cid, "/no/such/program")
    assert r.returncode == 255 and "exec failed" in r.stderr, r
    runner.delete(cid, "--force").ok()


@pytest.mark.parametrize("args", [["-h"], ["create", "-h"], ["exec", "-h"], ["kill", "-h"], ["list", "-h"],
                                  ["state", "-h"], ["delete", "-h"], ["spec", "-h"], ["update", "-h"]])
def test_dash_h_is_help(runner: Runner, args: list[str]) -> None:
    r = runner.cmd(*args)
    assert r.returncode == 0, r
    assert "usage" in r.stdout.lower() and r.stderr == "", r
    assert r.stdout == runner.cmd(*args[:-1], "--help").stdout


def test_dash_h_of_checkpoint_is_its_help(runner: Runner) -> None:
    """podman asks `checkpoint --help` whether a runtime can checkpoint: 0 with criu, as runc."""
    dash_h, help_ = runner.cmd("checkpoint", "-h"), runner.cmd("checkpoint", "--help")
    assert (dash_h.returncode, dash_h.stdout) == (help_.returncode, help_.stdout) and help_.returncode == 0


def test_debug_without_log_writes_to_stderr(runner: Runner, bundle: Bundle) -> None:
    bundle.sh("sleep 1000")
    cid = runner.new_id()
    r = runner.cmd("--debug", "run", "-d", "--bundle", str(bundle.path), cid).ok()
    assert "level=debug" in r.stderr, r
    quiet = runner.cmd("kill", cid, "KILL").ok()
    assert quiet.stderr == "", "without --debug nothing is logged to stderr"
    runner.wait_status(cid, "stopped")
    runner.delete(cid).ok()


def test_state_and_list_json_keys_in_runcs_order(runner: Runner, bundle: Bundle) -> None:
    bundle.config["annotations"] = {"org.example.key": "value"}
    bundle.sh("sleep 1000")
    cid = runner.new_id()
    runner.run(cid, bundle, "-d").ok()
    listed = json.loads(runner.cmd("list", "--format", "json").ok().stdout)
    state = json.loads(runner.cmd("state", cid).ok().stdout)
    for entry in (listed[0], state):
        assert list(entry) == RUNC_STATE_KEYS, entry
    runner.delete(cid, "--force").ok()


@pytest.mark.parametrize("mode", ["root"])  # pause needs a cgroup the runtime owns
def test_exec_in_paused_container_is_refused_in_runcs_words(runner: Runner, bundle: Bundle) -> None:
    bundle.sh("sleep 1000")
    cid = runner.new_id()
    runner.run(cid, bundle, "-d").ok()
    runner.cmd("pause", cid).ok()
    r = runner.cmd("exec", cid, "true")
    assert r.returncode == 255, r
    assert "cannot exec in a paused container (use --ignore-paused to override)" in r.stderr, r
    runner.cmd("resume", cid).ok()
    runner.cmd("exec", cid, "true").ok()
    runner.delete(cid, "--force").ok()
