"""The Python API (pyouki.api, docs/api.md): every verb, as root in this process and as the
unprivileged user in a script of its own, without the CLI; its errors are the CLI's, typed; it
leaves the calling process as it found it; and the example in docs/api.md runs as written."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from harness import Bundle, Runner

import pyouki
from pyouki import syscalls

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
# runs until SIGTERM, then exits 7 (a shell as pid 1 gets no default action for TERM)
SERVICE = ("sh", "-c", 'trap "exit 7" TERM; while :; do sleep 0.1; done')

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="drives containers as root and as the test user")


def as_user(runner: Runner, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run this interpreter as the test user, with the worktree's pyouki importable."""
    env = dict(runner.env(), PYTHONPATH=f"{REPO}:{TESTS}")
    kwargs: dict[str, Any] = {}
    if runner.rootless:
        kwargs = {"user": runner.user.uid, "group": runner.user.gid, "extra_groups": []}
    return subprocess.run([sys.executable, *argv], env=env, cwd=runner.workdir, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)


def _bundles(make_bundle: Any) -> tuple[Bundle, Bundle]:
    service = make_bundle("service", args=SERVICE)
    service.config["annotations"] = {"org.example/role": "web"}
    service.write()
    return service, make_bundle("short", args=("sh", "-c", "exit 5"))


def test_every_verb(runner: Runner, make_bundle: Any) -> None:
    service, short = _bundles(make_bundle)
    cid = runner.new_id("api")
    runner.ids.append(cid + "-run")
    args = (str(runner.state_root), str(service.path), str(short.path), cid)
    if runner.rootless:
        proc = as_user(runner, str(TESTS / "api_scenario.py"), *args)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
    else:
        from api_scenario import scenario

        out = scenario(*args)
    assert out["rootless"] is runner.rootless
    assert out["created"]["status"] == "created" and out["created"]["pid"] == out["created"]["handle_pid"] > 0
    assert out["created"]["bundle"] == str(service.path)
    assert out["created"]["annotations"] == {"org.example/role": "web"}
    assert out["exists"] == {"ok": False, "type": "ContainerExists", "path": None,
                             "message": f"{cid}: container with given ID already exists"}
    assert out["list"] == [cid] and out["get_pid"] == out["created"]["pid"]
    assert out["not_found"]["type"] == "ContainerNotFound"
    assert out["not_found"]["message"] == "no-such-container: container does not exist"
    assert out["started"] == "running"
    assert (out["exec_status"], out["exec_output"]) == (3, "hi\n")
    assert out["exec_killed_status"] == 128 + 9
    assert out["ps"]["ok"] and out["ps_has_init"]
    if runner.rootless:
        # no cgroup delegation on this host: the CLI's refusal, typed
        for verb, what in (("pause", "pause"), ("resume", "resume"), ("update", "update"),
                           ("events", "get events of")):
            assert out[verb]["type"] == "ContainerError", out[verb]
            assert out[verb]["message"].startswith(f"cannot {what} container {cid}: it has no cgroup"), out[verb]
    else:
        assert out["pause"]["ok"] and out["paused_status"] == "paused"
        assert out["resume"]["ok"] and out["resumed_status"] == "running"
        assert out["resume_not_paused"]["type"] == "ContainerNotPaused"
        assert "container not paused" in out["resume_not_paused"]["message"]
        assert out["update"]["ok"]
        assert out["events"] == {"ok": True, "type": "stats", "pids_limit": 64}
    assert out["delete_running"]["type"] == "ContainerError"
    assert out["delete_running"]["message"] == f"cannot delete container {cid} that is not stopped: running"
    assert out["wait"] == out["wait_again"] == 7
    assert out["stopped_status"] == "stopped"
    assert out["kill_stopped"]["type"] == "ContainerNotRunning"
    assert out["kill_stopped"]["message"] == f"cannot kill container {cid}: container not running"
    assert out["after_delete"]["type"] == "ContainerNotFound"
    assert out["left_in_root"] == []
    assert out["run"] == 5 and out["left_after_run"] == []
    assert runner.leftover_pids() == []


CONFIG_ERROR = """
import sys, pyouki
try:
    pyouki.Runtime(root=sys.argv[1]).create(sys.argv[2], bundle=sys.argv[3])
except pyouki.ConfigError as e:
    print(type(e).__name__, e.path, str(e), sep="\\n")
"""


@pytest.mark.parametrize("where", ["parent", "init"])
def test_config_errors_carry_the_cli_message_and_path(runner: Runner, make_bundle: Any, where: str) -> None:
    """A config error found before the fork, or in the container's init (it travels back as
    text), is a ConfigError with the field's JSON path and the very line the CLI prints."""
    bundle = make_bundle()
    if where == "parent":
        bundle.process["args"] = []
        field = "process.args"
    else:
        bundle.add_mount("/x", "tmpfs", "tmpfs", ["nosuch-option=1"])
        bundle.config["mounts"][-1]["type"] = "nosuchfs"
        field = f"mounts[{len(bundle.config['mounts']) - 1}]"
    bundle.write()
    cli = runner.create(runner.new_id(), bundle)
    assert cli.returncode != 0
    cli_message = cli.stderr.strip().removeprefix("pyouki: ")
    api = as_user(runner, "-c", CONFIG_ERROR, str(runner.state_root), runner.new_id(), str(bundle.path))
    assert api.returncode == 0, api.stderr
    kind, path, message = api.stdout.strip().split("\n")
    assert kind == "ConfigError" and path.startswith(field), api.stdout
    assert message == cli_message
    assert runner.state_entries() == []


@pytest.mark.parametrize("mode", ["root"])
def test_leaves_the_caller_alone(runner: Runner, make_bundle: Any) -> None:
    """No subreaper left set, no signal handler replaced, no chdir, no log state, and no child of
    the caller's reaped by the API (it never waits for pid -1)."""
    from pyouki import log

    bundle = make_bundle(args=SERVICE)
    handlers = {s: signal.getsignal(s) for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)}
    cwd = os.getcwd()
    log_settings = dict(log._settings)
    assert not syscalls.get_child_subreaper()
    mine = os.fork()
    if mine == 0:
        os._exit(42)
    time.sleep(0.05)  # a zombie of ours from now on: a waitpid(-1) anywhere would take it

    rt = pyouki.Runtime(root=str(runner.state_root))
    c = rt.create(runner.new_id(), bundle=str(bundle.path))
    assert not syscalls.get_child_subreaper()
    c.start()
    assert c.exec(["true"]).wait() == 0
    c.kill("KILL")
    assert c.wait() == 137
    c.delete()

    assert not syscalls.get_child_subreaper()
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert os.getcwd() == cwd
    assert log._settings == log_settings
    assert os.waitstatus_to_exitcode(os.waitpid(mine, 0)[1]) == 42


@pytest.mark.parametrize("mode", ["root"])
def test_subreaper_already_set_stays_set(runner: Runner, make_bundle: Any) -> None:
    bundle = make_bundle()
    syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
    try:
        assert pyouki.run(str(bundle.path), runner.new_id(), root=str(runner.state_root)) == 0
        assert syscalls.get_child_subreaper()
    finally:
        syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 0)


def test_wait_for_a_container_created_elsewhere(runner: Runner, make_bundle: Any) -> None:
    """A container created by the CLI (its init is not our child): wait() reads the status from
    the zombie or, once its parent reaped it, from the pidfd held since get()."""
    bundle = make_bundle(args=SERVICE)
    cid = runner.new_id()
    runner.create(cid, bundle).ok()
    runner.start(cid).ok()
    code = ("import sys, pyouki; c = pyouki.Runtime(root=sys.argv[1]).get(sys.argv[2]); print('watching', flush=True);"
            " print(c.wait(timeout=60))")
    env = dict(runner.env(), PYTHONPATH=f"{REPO}:{TESTS}")
    kwargs: dict[str, Any] = {"user": runner.user.uid, "group": runner.user.gid, "extra_groups": []} \
        if runner.rootless else {}
    proc = subprocess.Popen([sys.executable, "-c", code, str(runner.state_root), cid], env=env, cwd=runner.workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "watching"
    runner.kill(cid, "TERM").ok()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == "7"
    runner.delete(cid).ok()


@pytest.mark.parametrize("mode", ["root"])
def test_terminal_without_console_socket(runner: Runner, make_bundle: Any) -> None:
    """process.terminal with no console socket: the master end is Container.console."""
    bundle = make_bundle(args=("sh", "-c", "echo tty-ok; tty"))
    bundle.process["terminal"] = True
    bundle.write()
    rt = pyouki.Runtime(root=str(runner.state_root))
    c = rt.create(runner.new_id(), bundle=str(bundle.path))
    assert c.console >= 0
    c.start()
    data = b""
    while True:
        try:
            chunk = os.read(c.console, 4096)
        except OSError:  # EIO: the container closed its side
            break
        if not chunk:
            break
        data += chunk
    os.close(c.console)
    assert c.wait() == 0
    c.delete()
    text = data.decode()
    assert "tty-ok" in text and re.search(r"/dev/pts/\d+", text), text


@pytest.mark.parametrize("mode", ["root"])
def test_exec_with_a_terminal(runner: Runner, make_bundle: Any) -> None:
    bundle = make_bundle(args=SERVICE)
    rt = pyouki.Runtime(root=str(runner.state_root))
    c = rt.create(runner.new_id(), bundle=str(bundle.path))
    c.start()
    p = c.exec(["sh", "-c", "tty; exit 4"], tty=True)
    assert p.console >= 0
    data = b""
    while True:
        try:
            chunk = os.read(p.console, 4096)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    os.close(p.console)
    assert p.wait() == 4
    assert b"/dev/pts/" in data
    c.delete(force=True)


@pytest.mark.parametrize("mode", ["root"])
def test_wait_timeout(runner: Runner, make_bundle: Any) -> None:
    bundle = make_bundle(args=SERVICE)
    rt = pyouki.Runtime(root=str(runner.state_root))
    c = rt.create(runner.new_id(), bundle=str(bundle.path))
    c.start()
    with pytest.raises(TimeoutError):
        c.wait(timeout=0.2)
    c.delete(force=True)
    assert c.wait() == 137  # delete reaped it: the status stays known
    assert runner.state_entries() == []


def _doc_example() -> str:
    text = (REPO / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "docs/api.md has no python example"
    return blocks[0]


def test_docs_example_runs_as_written(runner: Runner) -> None:
    """The first python block of docs/api.md, as is, as root and as the unprivileged user."""
    script = runner.workdir / "example.py"
    script.write_text(_doc_example())
    os.chmod(script, 0o644)
    proc = as_user(runner, str(script))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "hello from the container" in proc.stdout
    assert "exec said: hi" in proc.stdout
    assert "exit status 143" in proc.stdout or "exit status 137" in proc.stdout, proc.stdout


def test_import_stays_cheap() -> None:
    """`import pyouki` (every command's first import) does not load the API."""
    code = "import sys, pyouki; print('pyouki.api' in sys.modules, 'dataclasses' in sys.modules)"
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(REPO)!r}); {code}"],
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    imports = subprocess.run(
        [sys.executable, "-I", "-X", "importtime", "-c",
         f"import sys; sys.path.insert(0, {str(REPO)!r}); from pyouki.cli.main import main; "
         "main(['--root', '/nonexistent-pyouki-root', 'state', 'x'])"],
        capture_output=True, text=True).stderr
    names = {line.split("|")[-1].strip() for line in imports.splitlines() if line.startswith("import time:")}
    assert "pyouki.cli.hot" in names  # the state command ran (its fast path)
    assert not names & {"pyouki.api", "dataclasses", "threading", "typing", "contextlib"}, names


@pytest.mark.parametrize("mode", ["rootless"])
def test_exec_right_after_start(runner: Runner, make_bundle: Any) -> None:
    """exec within a millisecond of start: init may not have exec'd yet and, not dumpable until
    then, refuses an unprivileged caller its namespaces; exec waits for it (failed 3 times in 8
    before)."""
    bundle = make_bundle(args=("sleep", "100"))
    code = """
import sys, pyouki
rt = pyouki.Runtime(root=sys.argv[1])
for i in range(10):
    c = rt.create(f"{sys.argv[2]}-{i}", bundle=sys.argv[3])
    try:
        c.start()
        assert c.exec(["true"]).wait() == 0
    finally:
        c.delete(force=True)
print("ok")
"""
    cid = runner.new_id()
    runner.ids.extend(f"{cid}-{i}" for i in range(10))
    proc = as_user(runner, "-c", code, str(runner.state_root), cid, str(bundle.path))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.parametrize("mode", ["root"])
def test_run_copies_the_terminal_to_stdout(runner: Runner, make_bundle: Any) -> None:
    bundle = make_bundle(args=("sh", "-c", "echo tty-run; tty; exit 6"))
    bundle.process["terminal"] = True
    bundle.write()
    out = runner.workdir / "out"
    with open(out, "wb") as f:
        status = pyouki.run(str(bundle.path), runner.new_id(), root=str(runner.state_root), stdout=f)
    assert status == 6
    text = out.read_text()
    assert text.splitlines()[0] == "tty-run" and "/dev/pts/" in text, text
    assert runner.state_entries() == []


@pytest.mark.parametrize("mode", ["root"])
def test_concurrent_runs_from_threads(runner: Runner, make_bundle: Any) -> None:
    """The subreaper flag is counted across threads: every init still comes back to us (each
    status is its own), and the flag is off once the last call ends."""
    import threading

    bundles = [make_bundle(f"b{i}", args=("sh", "-c", f"sleep 0.{i}; exit {10 + i}")) for i in range(4)]
    ids = [runner.new_id() for _ in bundles]
    results: dict[int, Any] = {}

    def go(i: int) -> None:
        try:
            results[i] = pyouki.run(str(bundles[i].path), ids[i], root=str(runner.state_root))
        except BaseException as e:  # noqa: BLE001 - reported below
            results[i] = e

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(bundles))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {i: 10 + i for i in range(len(bundles))}
    assert not syscalls.get_child_subreaper()
    assert runner.state_entries() == []
