"""OCI hooks: each phase runs at its point of the lifecycle, with the state on stdin."""

from __future__ import annotations

import os

from harness import Bundle, Runner, RuntimeInfo, assert_failed_cleanly


def _host_hook(runner: Runner, name: str, body: str) -> str:
    """A hook script on the host, runnable by the runtime's user."""
    path = runner.workdir / name
    path.write_text("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)
    return str(path)


def test_every_phase_runs_in_order_with_the_state(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    log = runner.xdg / "hooks.log"  # a directory the runtime's user can write to
    record = _host_hook(runner, "record", f'read -r state; echo "$1 $state" >> {log}\n')
    bundle.add_file("/bin/in-container-hook", "#!/bin/sh\necho startContainer > /tmp/started\n", 0o755)
    bundle.config["hooks"] = {
        phase: [{"path": record, "args": ["record", phase]}]
        for phase in ("prestart", "createRuntime", "createContainer", "poststart", "poststop")
    }
    bundle.config["hooks"]["startContainer"] = [{"path": "/bin/in-container-hook"}]
    bundle.sh("sleep 0.2; cat /tmp/started")
    cid = runner.new_id()
    out = runner.xdg / "out"
    runner.cmd("create", "--bundle", str(bundle.path), cid, stdout=out).ok()
    runner.start(cid).ok()
    assert runner.wait_status(cid, "stopped") == "stopped"
    runner.delete(cid).ok()
    lines = log.read_text().splitlines()
    phases = [line.split()[0] for line in lines]
    assert phases == ["prestart", "createRuntime", "createContainer", "poststart", "poststop"]
    assert all(f'"id":"{cid}"' in line.replace(" ", "") for line in lines)
    statuses = [line.replace(" ", "").split('"status":"')[1].split('"')[0] for line in lines]
    # runc 1.1 reports "created" to poststart; the process has been executed by then: running
    poststart = "running" if runtime.is_pyouki else statuses[3]
    assert statuses == ["creating", "creating", "creating", poststart, "stopped"]
    assert "startContainer" in out.read_text()


def test_failing_create_runtime_hook_fails_create_cleanly(runtime: RuntimeInfo, runner: Runner,
                                                          bundle: Bundle) -> None:
    failing = _host_hook(runner, "fail", "echo 'no network for you' >&2; exit 3\n")
    bundle.config["hooks"] = {"createRuntime": [{"path": failing}]}
    bundle.sh("true")
    r = runner.create(runner.new_id(), bundle)
    assert r.returncode != 0
    if runtime.is_pyouki:
        assert_failed_cleanly(runtime, r, "hooks.createRuntime[0]", "no network for you")
    assert runner.state_entries() == []
    assert runner.leftover_pids() == []


def test_hook_timeout(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    slow = _host_hook(runner, "slow", "sleep 30\n")
    bundle.config["hooks"] = {"prestart": [{"path": slow, "timeout": 1}]}
    bundle.sh("true")
    r = runner.create(runner.new_id(), bundle)
    assert r.returncode != 0
    if runtime.is_pyouki:
        assert_failed_cleanly(runtime, r, "hooks.prestart[0]", "timed out")
    assert runner.state_entries() == []


def test_relative_hook_path_is_a_config_error(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    bundle.config["hooks"] = {"poststart": [{"path": "relative/hook"}]}
    bundle.sh("true")
    r = runner.create(runner.new_id(), bundle)
    assert r.returncode != 0
    if runtime.is_pyouki:
        assert_failed_cleanly(runtime, r, "hooks.poststart[0].path")
    assert runner.state_entries() == []
