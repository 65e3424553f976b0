"""OCI hooks: each phase runs at its point of the lifecycle, with the state on stdin."""

from __future__ import annotations

import os
from collections.abc import Callable

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


def test_hooks_without_env_inherit_and_run_where_runc_runs_them(runner: Runner, bundle: Bundle) -> None:
    """Like runc: no `env` means the environment of the process that runs the hook (the
    runtime's; process.env for the in-container phases); `env: []` means none. create's and
    start's hooks run in the bundle, createContainer in the rootfs, startContainer in
    process.cwd, poststop where delete was called."""
    log = runner.xdg / "hooks.log"
    record = _host_hook(runner, "record",
                        f'echo "$1 cwd=$(pwd) runtime=${{RUNTIME_ONLY:-}} container=${{CONTAINER_ONLY:-}}" >> {log}\n')
    bundle.add_file("/bin/in-container-hook",
                    '#!/bin/sh\necho "startContainer cwd=$(pwd) container=${CONTAINER_ONLY:-}" > /tmp/started\n', 0o755)
    bundle.config["hooks"] = {
        phase: [{"path": record, "args": ["record", phase]}]
        for phase in ("prestart", "createRuntime", "createContainer", "poststart", "poststop")
    }
    bundle.config["hooks"]["poststart"].append({"path": record, "args": ["record", "emptyenv"], "env": []})
    bundle.config["hooks"]["startContainer"] = [{"path": "/bin/in-container-hook"}]
    bundle.config["process"]["env"].append("CONTAINER_ONLY=c1")
    bundle.config["process"]["cwd"] = "/etc"
    bundle.sh("cat /tmp/started")
    env = {**runner.env(), "RUNTIME_ONLY": "r1"}
    cid = runner.new_id()
    out = runner.xdg / "out"
    elsewhere = runner.workdir / "elsewhere"
    elsewhere.mkdir()
    runner.cmd("create", "--bundle", str(bundle.path), cid, stdout=out, env=env, cwd=elsewhere).ok()
    runner.cmd("start", cid, env=env, cwd=elsewhere).ok()
    assert runner.wait_status(cid, "stopped") == "stopped"
    runner.cmd("delete", cid, env=env, cwd=elsewhere).ok()
    b = str(bundle.path)
    assert log.read_text().splitlines() == [
        f"prestart cwd={b} runtime=r1 container=",
        f"createRuntime cwd={b} runtime=r1 container=",
        f"createContainer cwd={b}/rootfs runtime= container=c1",
        f"poststart cwd={b} runtime=r1 container=",
        f"emptyenv cwd={b} runtime= container=",
        f"poststop cwd={elsewhere} runtime=r1 container=",
    ]
    assert out.read_text().strip() == "startContainer cwd=/etc container=c1"


def test_failing_poststart_hook_fails_start_and_stops_the_container(runner: Runner, bundle: Bundle,
                                                                     xfail_runc: Callable[[str], None]) -> None:
    """runtime.md Lifecycle step 9: a failing poststart hook is an error, the container is
    stopped and the lifecycle goes on at step 12 (delete). Only poststop failures are warnings."""
    xfail_runc("runc 1.1 runs poststart hooks in create")
    failing = _host_hook(runner, "fail", "echo 'poststart broke' >&2; exit 2\n")
    bundle.config["hooks"] = {"poststart": [{"path": failing}]}
    bundle.sh("sleep 100")
    cid = runner.new_id()
    runner.create(cid, bundle).ok()
    r = runner.start(cid)
    assert r.returncode != 0
    assert "hooks.poststart[0]" in r.stderr and "poststart broke" in r.stderr
    assert runner.wait_status(cid, "stopped") == "stopped"
    runner.delete(cid).ok()
    assert runner.leftover_pids() == []


def test_start_container_hook_runs_under_the_seccomp_filter_with_no_new_privileges(runner: Runner,
                                                                                   bundle: Bundle) -> None:
    """runc loads a noNewPrivileges filter before it waits for start, so startContainer hooks
    run under it (as they do without noNewPrivileges): a syscall the profile denies fails there."""
    bundle.add_file("/bin/in-container-hook",
                    "#!/bin/sh\nif mkdir /tmp/by-hook; then echo allowed; else echo denied; fi > /tmp/result\n", 0o755)
    bundle.config["hooks"] = {"startContainer": [{"path": "/bin/in-container-hook"}]}
    bundle.config["process"]["noNewPrivileges"] = True
    bundle.linux["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW",
                               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}
    bundle.sh("cat /tmp/result")
    assert runner.run(runner.new_id(), bundle).ok().stdout.strip() == "denied"
