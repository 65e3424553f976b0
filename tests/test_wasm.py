"""The wasm handler: WebAssembly containers run by wasmtime (annotation run.oci.handler=wasm).

Real containers from the busybox rootfs, root and rootless, whose entrypoint is a WASI module
written in tests/wasm_modules.py; the runtime compiles `.wat` itself. Also: the errors (missing,
corrupt, non-WASI module, unknown annotation value, wasmtime not installed) and that nothing
imports wasmtime without the annotation.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import wasm_modules as wm
from harness import Bundle, Runner, RuntimeInfo, assert_failed_cleanly, proc_status_field, wait_pid_gone

pytest.importorskip("wasmtime", reason="wasmtime is not installed (pyouki's wasm extra)")

HANDLER = {"run.oci.handler": "wasm"}


@pytest.fixture(autouse=True)
def _pyouki_only(runtime: RuntimeInfo) -> None:
    if not runtime.is_pyouki:
        pytest.skip("runc has no wasm handler")


def wasm_bundle(make_bundle: Callable[..., Bundle], source: str | bytes, *args: str, name: str = "/m.wat",
                annotations: dict[str, str] | None = None) -> Bundle:
    """A busybox bundle whose entrypoint is the module `source` at `name` (text or binary)."""
    b = make_bundle(name=f"bundle-{uuid.uuid4().hex[:8]}")
    if isinstance(source, bytes):
        p = b.rootfs / name.lstrip("/")
        p.write_bytes(source)
        os.chmod(p, 0o755)
        if b.owner is not None:
            os.chown(p, *b.owner)
    else:
        b.add_file(name, source, mode=0o755)
    b.config["annotations"] = dict(HANDLER if annotations is None else annotations)
    b.set_args(name, *args)
    return b


def assert_nothing_left(runner: Runner) -> None:
    assert runner.state_entries() == []
    assert runner.leftover_pids() == []


# --- running modules ---------------------------------------------------------------------------


def test_wat_module_prints_args_and_env(runner: Runner, make_bundle: Callable[..., Bundle]) -> None:
    b = wasm_bundle(make_bundle, wm.echo(), "first arg", "b")
    b.process["env"].append("WASM_TEST=hello world")
    b.write()
    r = runner.run(runner.new_id(), b).ok()
    args, _, env = r.stdout.partition("--\n")
    assert args.splitlines() == ["/m.wat", "first arg", "b"], r
    env_lines = env.splitlines()
    assert "WASM_TEST=hello world" in env_lines, r
    assert "HOME=/root" in env_lines, r  # filled in as for any container process
    assert any(line.startswith("PATH=") for line in env_lines), r
    assert_nothing_left(runner)


def test_exit_code_is_the_modules(runner: Runner, make_bundle: Callable[..., Bundle]) -> None:
    r = runner.run(runner.new_id(), wasm_bundle(make_bundle, wm.exit_with(42)))
    assert r.returncode == 42, r
    assert r.stdout == "exiting\n", r
    assert r.stderr == "", r


def test_binary_module_with_crun_compat_variant(runner: Runner, make_bundle: Callable[..., Bundle]) -> None:
    b = wasm_bundle(make_bundle, wm.wasm_binary(wm.exit_with(3)), name="/bin/hello.wasm",
                    annotations={"module.wasm.image/variant": "compat"})
    b.set_args("hello.wasm")  # found in $PATH like an executable
    r = runner.run(runner.new_id(), b)
    assert (r.returncode, r.stdout) == (3, "exiting\n"), r


def test_reads_files_through_the_root_and_cwd_preopens(runner: Runner, make_bundle: Callable[..., Bundle]) -> None:
    b = wasm_bundle(make_bundle, wm.cat(3, "etc/wasm-data"))
    b.add_file("/etc/wasm-data", "from-the-rootfs\n")
    r = runner.run(runner.new_id(), b).ok()
    assert r.stdout == "from-the-rootfs\n", r
    # fd 4 is process.cwd
    b2 = wasm_bundle(make_bundle, wm.cat(4, "here.txt"), name="/srv/cat.wat")
    b2.add_file("/srv/work/here.txt", "from-the-cwd\n")
    b2.process["cwd"] = "/srv/work"
    b2.write()
    r = runner.run(runner.new_id(), b2).ok()
    assert r.stdout == "from-the-cwd\n", r


def test_module_is_confined_to_the_container(runner: Runner, make_bundle: Callable[..., Bundle],
                                             workdir: Path) -> None:
    """`/` is the container's root: a host file is out of reach, and a masked path stays masked."""
    host_file = workdir / "host-only"
    host_file.write_text("host secret\n")
    b = wasm_bundle(make_bundle, wm.cat(3, str(host_file).lstrip("/")))
    r = runner.run(runner.new_id(), b)
    assert r.returncode == 10 and "secret" not in r.stdout, r
    b2 = wasm_bundle(make_bundle, wm.cat(3, "proc/kcore"))
    b2.linux["maskedPaths"] = ["/proc/kcore"]
    b2.write()
    r = runner.run(runner.new_id(), b2)  # masked (a /dev/null bind): wasmtime refuses to open it
    assert r.returncode in (0, 10) and r.stdout == "", r


def test_trap_exits_134_with_one_line(runner: Runner, make_bundle: Callable[..., Bundle]) -> None:
    r = runner.run(runner.new_id(), wasm_bundle(make_bundle, wm.trap(), name="/trap.wat"))
    assert r.returncode == 134, r
    assert r.stdout == "before-trap\n", r
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("pyouki: /trap.wat: wasm trap: "), r
    assert "unreachable" in r.stderr, r
    assert_nothing_left(runner)


def test_compat_smart_runs_modules_and_executables(runner: Runner, make_bundle: Callable[..., Bundle]) -> None:
    smart = {"module.wasm.image/variant": "compat-smart"}
    r = runner.run(runner.new_id(), wasm_bundle(make_bundle, wm.exit_with(5), annotations=smart))
    assert (r.returncode, r.stdout) == (5, "exiting\n"), r
    b = make_bundle(name="linux")
    b.config["annotations"] = smart
    b.sh("echo linux-process; exit 4")  # not a module: executed as usual
    r = runner.run(runner.new_id(), b)
    assert (r.returncode, r.stdout) == (4, "linux-process\n"), r


def test_lifecycle_create_waits_start_runs(runner: Runner, make_bundle: Callable[..., Bundle]) -> None:
    """create compiles and waits (one thread), start runs the module; ps, pause, kill, delete work as usual."""
    b = wasm_bundle(make_bundle, wm.sleep_then_print(600))
    cid = runner.new_id()
    out = runner.workdir / "out"
    stray = os.open(runner.workdir / "stray-fd", os.O_WRONLY | os.O_CREAT, 0o644)
    try:  # an fd the runtime gets without --preserve-fds: exec would close it, so must the handler
        runner.create(cid, b, stdout=out, fds={7: stray}).ok()
    finally:
        os.close(stray)
    state = runner.state(cid)
    assert state["status"] == "created"
    assert state["annotations"] == HANDLER
    pid = state["pid"]
    # compiled without a thread pool: the waiting container is one thread
    assert proc_status_field(pid, "Threads") == "1"
    runner.start(cid).ok()
    assert runner.wait_status(cid, "running") == "running"
    deadline = 100
    while "sleeping" not in out.read_text() and deadline:
        deadline -= 1
        subprocess.run(["sleep", "0.05"])
    assert out.read_text() == "sleeping\n"
    # the module's process holds stdio and wasmtime's own fds only: the runtime's are closed
    targets = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd") if int(fd) > 2}
    assert all(t == "/" or t.startswith(("anon_inode:", "/memfd:")) for t in targets), targets
    if not runner.rootless:
        # rootless without a cgroup, ps looks for the pid namespace in /proc/PID/ns, which the owner
        # cannot read: the module's process never execs, so it stays non-dumpable (its memory holds
        # the runtime's data)
        assert pid in json.loads(runner.cmd("ps", "--format", "json", cid).ok().stdout)
    if not runner.rootless:  # a rootless container on this cgroup v1 host has no freezer
        runner.cmd("pause", cid).ok()
        assert runner.state(cid)["status"] == "paused"
        runner.cmd("resume", cid).ok()
        assert runner.state(cid)["status"] == "running"
    runner.kill(cid, "KILL").ok()
    assert wait_pid_gone(pid)
    assert runner.wait_status(cid, "stopped") == "stopped"
    runner.delete(cid).ok()
    assert_nothing_left(runner)


def test_sleeping_module_wakes_and_exits(runner: Runner, make_bundle: Callable[..., Bundle]) -> None:
    r = runner.run(runner.new_id(), wasm_bundle(make_bundle, wm.sleep_then_print(1)))
    assert (r.returncode, r.stdout) == (0, "sleeping\nwoke\n"), r


def test_terminal(runner: Runner, make_bundle: Callable[..., Bundle]) -> None:
    """With process.terminal the module's stdout is the container's pty (relayed by run, under script)."""
    b = wasm_bundle(make_bundle, wm.stdout_kind())
    r = runner.run(runner.new_id(), b).ok()
    assert r.stdout == "not-a-tty\n", r
    b.config["process"]["terminal"] = True
    b.write()
    argv = runner.argv(["run", "--bundle", str(b.path), runner.new_id()])
    inner = " ".join(f"'{a}'" for a in argv)
    p = subprocess.run(["script", "-qec", inner, "/dev/null"], capture_output=True, text=True, timeout=60,
                       cwd=str(runner.workdir), env=runner.env(), stdin=subprocess.DEVNULL,
                       **runner._spawn_kwargs())
    assert p.returncode == 0, p
    assert p.stdout.replace("\r", "") == "tty\n", p
    assert runner.state_entries() == []


# --- errors: one line at create, nothing left behind -------------------------------------------


def test_missing_module(runtime: RuntimeInfo, runner: Runner, make_bundle: Callable[..., Bundle]) -> None:
    b = wasm_bundle(make_bundle, wm.echo())
    b.set_args("/no/such.wasm")
    r = runner.create(runner.new_id(), b)
    assert_failed_cleanly(runtime, r, "process.args[0]", "/no/such.wasm")
    assert_nothing_left(runner)


@pytest.mark.parametrize("name, content, words", [
    ("/bad.wasm", b"\0asm\x01\0\0\0garbage", ["/bad.wasm", "not a valid WebAssembly module", "failed to parse"]),
    ("/text.wasm", b"#!/bin/sh\necho hi\n", ["/text.wasm", "not a WebAssembly module"]),
    ("/bad.wat", b"(module (func $f", ["/bad.wat", "not a valid WebAssembly module", "line 1 column"]),
    ("/lib.wat", b'(module (func (export "f")))', ["/lib.wat", "exports no _start"]),
    ("/env.wat", b'(module (import "env" "f" (func)) (func (export "_start")))', ["/env.wat", "env::f"]),
])
def test_bad_module_fails_create(runtime: RuntimeInfo, runner: Runner, make_bundle: Callable[..., Bundle],
                                 name: str, content: bytes, words: list[str]) -> None:
    b = wasm_bundle(make_bundle, content, name=name)
    r = runner.create(runner.new_id(), b)
    assert_failed_cleanly(runtime, r, "process.args[0]", *words)
    assert_nothing_left(runner)


@pytest.mark.parametrize("annotations, field", [
    ({"run.oci.handler": "krun"}, "annotations.run.oci.handler"),
    ({"module.wasm.image/variant": "oci"}, "annotations.module.wasm.image/variant"),
])
def test_unknown_annotation_value(runtime: RuntimeInfo, runner: Runner, make_bundle: Callable[..., Bundle],
                                  annotations: dict[str, str], field: str) -> None:
    r = runner.create(runner.new_id(), wasm_bundle(make_bundle, wm.echo(), annotations=annotations))
    assert_failed_cleanly(runtime, r, field)
    assert_nothing_left(runner)


def _interpreter(runtime: RuntimeInfo) -> list[str]:
    """The launcher's `#!` line as an argv prefix (the venv's python -IS)."""
    first = Path(runtime.path).read_text().splitlines()[0]
    assert first.startswith("#!"), first
    return first[2:].split()


def test_without_wasmtime_create_says_how_to_install_it(runtime: RuntimeInfo, runner: Runner,
                                                        make_bundle: Callable[..., Bundle]) -> None:
    """As if the wasm extra were missing: the launcher runs with `import wasmtime` failing."""
    wrapper = runner.workdir / "pyouki-without-wasmtime"
    wrapper.write_text(
        f"#!{' '.join(_interpreter(runtime))}\n"
        "import sys\n"
        "sys.modules['wasmtime'] = None  # what an uninstalled package looks like to import\n"
        f"exec(compile(open({runtime.path!r}).read(), {runtime.path!r}, 'exec'))\n")
    os.chmod(wrapper, 0o755)
    b = wasm_bundle(make_bundle, wm.echo())
    argv = [str(wrapper), "--root", str(runner.state_root), "create", "--bundle", str(b.path), runner.new_id()]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=runner.env(), cwd=str(runner.workdir),
                       **runner._spawn_kwargs())
    assert p.returncode != 0, p
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p
    assert lines[0].startswith("pyouki: annotations.run.oci.handler: "), p
    assert "wasmtime" in lines[0] and "pyouki[wasm]" in lines[0], p
    assert_nothing_left(runner)


@pytest.mark.parametrize("mode", ["root"])
def test_nothing_imports_wasmtime_without_the_annotation(runtime: RuntimeInfo, runner: Runner,
                                                         make_bundle: Callable[..., Bundle]) -> None:
    def imported(b: Bundle) -> set[str]:
        argv = [*_interpreter(runtime), "-X", "importtime", runtime.path, "--root", str(runner.state_root),
                "run", "--bundle", str(b.path), runner.new_id()]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=runner.env(),
                           cwd=str(runner.workdir))
        assert p.returncode == 0, p
        return {line.rsplit("|", 1)[-1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}

    plain = make_bundle(name="plain")
    assert not any(m.startswith("wasmtime") for m in imported(plain))
    # the check itself sees the import when the annotation asks for it
    assert "wasmtime" in imported(wasm_bundle(make_bundle, wm.exit_with(0)))


@pytest.mark.parametrize("mode", ["root"])
def test_features_lists_the_handler(runner: Runner) -> None:
    doc = json.loads(runner.cmd("features", root=None).ok().stdout)
    assert doc["annotations"]["run.oci.handler"] == "wasm"
    assert doc["annotations"]["module.wasm.image/variant"] == "compat,compat-smart"
    assert "run.oci.handler" in doc["potentiallyUnsafeConfigAnnotations"]


def test_python_api_runs_a_module(runtime: RuntimeInfo, runner: Runner, make_bundle: Callable[..., Bundle]) -> None:
    """pyouki as a library (the venv's python, this tree first on sys.path): run() returns the exit status."""
    b = wasm_bundle(make_bundle, wm.exit_with(9))
    code = (
        "import sys\n"
        f"sys.path[0:0] = [{str(Path(__file__).resolve().parents[1])!r}]\n"
        "import pyouki\n"
        f"sys.exit(pyouki.run({str(b.path)!r}, {runner.new_id()!r}, root={str(runner.state_root)!r}))\n")
    p = subprocess.run([_interpreter(runtime)[0], "-c", code], capture_output=True, text=True, timeout=60,
                       env=runner.env(), cwd=str(runner.workdir), **runner._spawn_kwargs())
    assert (p.returncode, p.stdout, p.stderr) == (9, "exiting\n", ""), p
    assert_nothing_left(runner)
