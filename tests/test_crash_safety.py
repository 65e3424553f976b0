"""Crash safety: a runtime killed at any point leaves nothing `delete --force` cannot remove.

Engines SIGKILL a runtime that hangs, and machines lose power: whatever `create`, `run`, `exec`,
`start` or `delete` was doing, `delete --force ID` must then leave no state directory, process,
mount or cgroup, and the id must be usable again. Also here: the channel's long messages, and
the one-line errors of the CLI's last resort.
"""

from __future__ import annotations

import json
import marshal
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from harness import (
    MARK_VAR,
    Bundle,
    Runner,
    RuntimeInfo,
    assert_failed_cleanly,
    cgroup_leftovers,
    marked_pids,
    mounts_under,
    pid_alive,
    wait_pid_gone,
)

SEED = int(os.environ.get("PYOUKI_FAULT_SEED") or random.SystemRandom().randrange(2**32))
ROUNDS = int(os.environ.get("PYOUKI_FAULT_ROUNDS") or 6)  # per verb and mode


def _wait_gone(mark: str, timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while marked_pids(mark) and time.monotonic() < deadline:
        time.sleep(0.02)
    return marked_pids(mark)


def _kill_at(proc: subprocess.Popen[bytes], delay: float) -> None:
    time.sleep(delay)
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def _after_kill(runner: Runner, cid: str, mark: str, bundle: Bundle, label: str) -> list[str]:
    """delete --force, then check that nothing is left and that the id can be used again."""
    env = runner.env() | {MARK_VAR: mark}
    problems = []
    r = runner.cmd("delete", "--force", cid, env=env)
    if r.returncode != 0:
        problems.append(f"delete --force: {r}")
    if (runner.state_root / cid).exists():
        problems.append(f"state left: {sorted(os.listdir(runner.state_root / cid))}")
    left = _wait_gone(mark)
    if left:
        problems.append(f"processes left: {left}")
    if cgroup_leftovers([cid]):
        problems.append(f"cgroups left: {cgroup_leftovers([cid])}")
    left = _wait_gone(runner.mark)  # what the container runs (after exec, only its config's env marks it)
    if left:
        problems.append(f"container processes left: {left}")
    if mounts_under([runner.workdir]):
        problems.append(f"mounts left: {mounts_under([runner.workdir])}")
    r = runner.cmd("create", "--bundle", str(bundle.path), cid, env=env)
    if r.returncode != 0:
        problems.append(f"id not reusable: {r}")
    else:
        runner.cmd("delete", "--force", cid, env=env).ok()
    return [f"{label}: {p}" for p in problems]


def _timed(runner: Runner, *args: str) -> float:
    started = time.monotonic()
    runner.cmd(*args).ok()
    return time.monotonic() - started


@pytest.mark.parametrize("verb", ["create", "run", "start", "exec", "delete"])
def test_sigkill_at_random_points(runner: Runner, bundle: Bundle, verb: str) -> None:
    """SIGKILL the verb after a random delay (up to its usual duration); then `delete --force`
    cleans up everything, and the id is reusable."""
    print(f"fault injection: seed {SEED}; replay with PYOUKI_FAULT_SEED={SEED}")
    rng = random.Random(f"{SEED}-{runner.mode}-{verb}")
    bundle.set_args("sleep", "1000")
    # how long the verb normally takes: the kills land anywhere in it
    probe = runner.new_id("probe")
    span = _timed(runner, "create", "--bundle", str(bundle.path), probe)
    if verb == "start":
        span = _timed(runner, "start", probe)
    elif verb == "exec":
        runner.start(probe).ok()
        span = _timed(runner, "exec", "-d", probe, "sleep", "999")
    elif verb == "delete":
        span = _timed(runner, "delete", "--force", probe)
    runner.cmd("delete", "--force", probe).ok()
    problems: list[str] = []
    for i in range(ROUNDS):
        cid = runner.new_id(f"{verb}{i}")
        mark = f"{runner.mark}-{verb}{i}"
        env = runner.env() | {MARK_VAR: mark}
        if verb in ("exec", "delete"):
            runner.cmd("run", "-d", "--bundle", str(bundle.path), cid, env=env).ok()
        elif verb == "start":
            runner.cmd("create", "--bundle", str(bundle.path), cid, env=env).ok()
        argv = {"create": ["create", "--bundle", str(bundle.path), cid],
                "run": ["run", "--bundle", str(bundle.path), cid],
                "start": ["start", cid],
                "exec": ["exec", cid, "sleep", "999"],
                "delete": ["delete", "--force", cid]}[verb]
        delay = rng.uniform(0, span * (1.6 if verb == "run" else 1.2))  # run: create, then start
        proc = subprocess.Popen(runner.argv(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd=str(runner.workdir), env=env,
                                **runner._spawn_kwargs())
        _kill_at(proc, delay)
        problems += _after_kill(runner, cid, mark, bundle, f"{verb} killed after {delay * 1000:.0f} ms")
    assert problems == [], f"seed {SEED}:\n" + "\n".join(problems)


def _blocked_create(runner: Runner, bundle: Bundle, workdir: Path, mark: str) -> tuple[str, subprocess.Popen[bytes]]:
    """A create stopped in its prestart hook (init is up and in its cgroup, nothing is recorded)."""
    flag = workdir / f"hook-{mark[-6:]}"
    bundle.config["hooks"] = {"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", f"touch {flag}; exec sleep 30"],
                                            "env": [f"{MARK_VAR}={runner.mark}"]}]}
    bundle.set_args("sleep", "1000")
    cid = runner.new_id("blocked")
    proc = subprocess.Popen(runner.argv(["create", "--bundle", str(bundle.path), cid]), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(runner.workdir),
                            env=runner.env() | {MARK_VAR: mark}, **runner._spawn_kwargs())
    deadline = time.monotonic() + 20
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert flag.exists(), "the prestart hook did not run"
    return cid, proc


def _hook_dir(runner: Runner) -> Path:
    d = runner.workdir / "hookdir"
    d.mkdir(exist_ok=True)
    if runner.owner:
        os.chown(d, *runner.owner)
    return d


def test_init_dies_with_a_killed_create(runner: Runner, bundle: Bundle) -> None:
    """Until create has recorded the container, init and the intermediate die with it: nothing
    could find them afterwards (once, a live init survived two `delete --force`)."""
    mark = f"{runner.mark}-orphan"
    cid, proc = _blocked_create(runner, bundle, _hook_dir(runner), mark)
    facts = marshal.loads((runner.state_root / cid / "creating.bin").read_bytes())
    init = int(facts["pid"])
    assert pid_alive(init)
    assert not (runner.state_root / cid / "state.bin").exists()
    _kill_at(proc, 0)
    assert wait_pid_gone(init, 5), "init outlived the create that was setting it up"
    assert _wait_gone(mark) == []


@pytest.mark.parametrize("force", [True, False])
def test_delete_removes_what_a_killed_create_left(runtime: RuntimeInfo, runner: Runner, bundle: Bundle,
                                                  force: bool) -> None:
    """A directory without a record (create killed before it saved one) goes with its cgroup and
    processes; like runc, a plain delete removes it too and says the container does not exist."""
    mark = f"{runner.mark}-left"
    cid, proc = _blocked_create(runner, bundle, _hook_dir(runner), mark)
    _kill_at(proc, 0)
    assert (runner.state_root / cid).is_dir()
    r = runner.cmd("create", "--bundle", str(bundle.path), cid)
    assert_failed_cleanly(runtime, r, "already exists")
    r = runner.delete(cid, *(["--force"] if force else []))
    if force:
        r.ok()
    else:
        assert_failed_cleanly(runtime, r, "does not exist")
    assert not (runner.state_root / cid).exists()
    assert _wait_gone(mark) == []
    assert cgroup_leftovers([cid]) == []
    bundle.config.pop("hooks")
    bundle.write()
    runner.create(cid, bundle).ok()
    assert runner.status(cid) == "created"
    runner.delete(cid, "--force").ok()


def test_delete_force_removes_a_directory_holding_only_the_fifo(runner: Runner, bundle: Bundle) -> None:
    """The state the issue found after 8 of 15 killed creates: only exec.fifo. `delete --force`
    said the container did not exist, create that it existed: the id was blocked for good."""
    cid = runner.new_id()
    runner.create(cid, bundle).ok()
    runner.delete(cid, "--force").ok()  # the state root exists now
    d = runner.state_root / cid
    d.mkdir(mode=0o700)
    os.mkfifo(d / "exec.fifo", 0o600)
    if runner.owner:
        os.chown(d, *runner.owner)
        os.chown(d / "exec.fifo", *runner.owner)
    runner.delete(cid, "--force").ok()
    assert not d.exists()
    runner.create(cid, bundle).ok()
    runner.delete(cid, "--force").ok()
    assert runner.state_entries() == []


def test_delete_waits_for_a_create_in_progress(runner: Runner, bundle: Bundle) -> None:
    """A delete of an id whose create is still running waits for it, instead of taking its
    unrecorded directory for the remains of a killed one."""
    mark = f"{runner.mark}-busy"
    hook_dir = _hook_dir(runner)
    cid, proc = _blocked_create(runner, bundle, hook_dir, mark)
    deleter = runner.popen("delete", "--force", cid)
    time.sleep(0.5)
    assert deleter.poll() is None, "delete did not wait for the create holding the id"
    assert (runner.state_root / cid).is_dir()
    # let the create finish: its hook is the sleep we started
    for pid in marked_pids(runner.mark):
        if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\x0030"):
            os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=30) != 0  # the hook was killed: create fails and cleans up
    assert deleter.wait(timeout=30) == 0
    assert not (runner.state_root / cid).exists()
    assert _wait_gone(mark) == []


def test_racing_deletes_spare_a_recreated_container(runner: Runner, bundle: Bundle, make_bundle) -> None:  # type: ignore[no-untyped-def]
    """Two deletes wait for the lock; the winner removes the container (and holds the lock in its
    poststop hook) while the id is created anew; the loser must not remove the new container."""
    hook_dir = _hook_dir(runner)
    started, go = hook_dir / "poststop-started", hook_dir / "go"
    old = make_bundle("old", args=("true",))
    old.config["hooks"] = {"poststop": [{"path": "/bin/sh", "args": [
        "sh", "-c", f"touch {started}; while [ ! -e {go} ]; do sleep 0.01; done"]}]}
    old.write()
    cid = runner.new_id("race")
    runner.create(cid, old).ok()
    runner.start(cid).ok()
    assert runner.wait_status(cid, "stopped") == "stopped"
    import fcntl

    held = os.open(runner.state_root / cid, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(held, fcntl.LOCK_EX)
    deleters = [runner.popen("delete", "--force", cid) for _ in range(2)]
    time.sleep(0.5)  # both are waiting for the lock on the old directory
    os.close(held)
    deadline = time.monotonic() + 20
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert started.exists(), "no delete reached the poststop hook"
    bundle.set_args("sleep", "1000")
    runner.create(cid, bundle).ok()  # the id is free again: the winner removed the old directory
    go.touch()
    for d in deleters:
        assert d.wait(timeout=30) == 0
    assert runner.status(cid) == "created", "a delete meant for the old container removed the new one"
    pid = runner.state(cid)["pid"]
    assert pid_alive(pid)
    runner.delete(cid, "--force").ok()
    assert wait_pid_gone(pid)


def test_a_start_killed_after_its_write_leaves_a_running_container(runner: Runner, bundle: Bundle) -> None:
    """start writes to exec.fifo, then removes it; killed in between, the fifo stays: the
    container has started all the same and must not read as `created` for ever."""
    flag = "/tmp/started"
    bundle.sh(f"touch {flag}; exec sleep 1000")
    cid = runner.new_id()
    runner.create(cid, bundle).ok()
    assert runner.status(cid) == "created"
    fifo = runner.state_root / cid / "exec.fifo"
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # what start does, up to its write
    os.write(fd, b"0")
    os.close(fd)
    assert fifo.exists()
    assert runner.wait_status(cid, "running", timeout=10) == "running"
    # "running" means init has exec'd; the shell's touch comes a moment later
    started = bundle.rootfs / flag.lstrip("/")
    deadline = time.monotonic() + 10
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert started.exists(), "the process did not start"
    r = runner.start(cid)
    assert r.returncode != 0
    runner.delete(cid, "--force").ok()


def test_long_error_from_init_arrives_whole(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    """An error longer than a pipe's atomic write (PIPE_BUF) comes back whole, as one line: the
    channel's messages were cut at 4,000 bytes before."""
    name = "a" * 3000 + "b" * 3000
    bundle.set_args(name)
    r = runner.create(runner.new_id(), bundle)
    assert_failed_cleanly(runtime, r, "process.args[0]", name)
    assert runner.state_entries() == []


@pytest.mark.parametrize(("where", "value", "fragment"), [
    ("cgroupsPath", 42, "linux.cgroupsPath: must be a string"),
    ("cgroupsPath", "/pyouki/x\u0000y", "linux.cgroupsPath: must not contain a NUL byte"),
    ("hook env", ["A=1\u0000B=2"], "hooks.prestart[0].env[0]: must not contain a NUL byte"),
    ("hook timeout", 2**63, "hooks.prestart[0].timeout: must be at most"),
    ("nested", 100000, "nested too deeply"),
    ("lone surrogate", "\ud800", "process.env[0]: is not valid unicode"),
])
def test_what_the_fuzzer_found_is_refused_at_create(runtime: RuntimeInfo, runner: Runner, bundle: Bundle,
                                                    where: str, value: object, fragment: str) -> None:
    if where == "nested":
        bundle.config_path.write_text('{"annotations": ' + "[" * int(value) + "]" * int(value) + "}")  # type: ignore[call-overload]
    else:
        hook = {"path": "/bin/true"}
        if where == "cgroupsPath":
            bundle.linux["cgroupsPath"] = value
        elif where == "hook env":
            hook["env"] = value  # type: ignore[assignment]
        elif where == "hook timeout":
            hook["timeout"] = value  # type: ignore[assignment]
        elif where == "lone surrogate":
            bundle.process["env"] = [f"X={value}"]
        bundle.config["hooks"] = {"prestart": [hook]}
        bundle.config_path.write_text(json.dumps(bundle.config))  # ensure_ascii: \ud800 stays an escape
        if runner.owner:
            os.chown(bundle.config_path, *runner.owner)
    r = runner.create(runner.new_id(), bundle)
    assert_failed_cleanly(runtime, r, fragment)
    assert "Traceback" not in r.stderr
    assert runner.state_entries() == []


@pytest.mark.parametrize("mode", ["rootless"])
def test_list_of_an_unreadable_root_is_one_line(runtime: RuntimeInfo, runner: Runner) -> None:
    root = runner.workdir / "root-only"
    root.mkdir(mode=0o700)
    r = runner.cmd("list", root=str(root))
    assert_failed_cleanly(runtime, r, str(root), "permission denied")
    r = runner.cmd("state", "x", root=str(root))
    assert_failed_cleanly(runtime, r, "permission denied")


def test_debug_shows_the_chain(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    """One line without --debug; with it, the cause (here the OSError behind the message) follows."""
    bundle.config_path.unlink()
    bundle.config_path.mkdir()
    r = runner.create(runner.new_id(), bundle)
    assert_failed_cleanly(runtime, r, "config.json", "is a directory")
    r = runner.cmd("--debug", "create", "--bundle", str(bundle.path), runner.new_id())
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert "config.json" in lines[0] and "is a directory" in lines[0]
    assert all(line.startswith("pyouki: debug: ") for line in lines[1:])
    assert any("IsADirectoryError" in line for line in lines[1:]), r.stderr
