"""The way into the container's program: never the host's interpreter, never a caller's fd.

CVE-2019-5736 shape: init and exec's child are the host's Python interpreter until their last
execve, so a container whose program is /proc/self/exe (or a #!/proc/self/exe script) would run the
host interpreter and could write it through /proc/PID/exe. These tests run pyouki with a private copy
of the interpreter (never the real one), in a rootfs where that interpreter can start, and attack it.

CVE-2024-21626 shape: a directory fd of the caller's reaching the container lets process.cwd =
/proc/self/fd/N start the program outside the rootfs. The leaked fd is a test directory, never /.

runc 1.1.5 passes all of them on the same bundles (its init is a sealed memfd copy of runc; it
refuses such a cwd), except for keeping signals the caller ignored, which it resets.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Bundle, Runner, RuntimeInfo, pid_alive

# Run by the host interpreter inside the container, if the runtime lets it: keep an O_PATH handle on
# the interpreter's inode, then write through it once no Python process runs it any more.
PAYLOAD = (
    "import os\n"
    "open('/tmp/pwned', 'w').write('ran')\n"
    "os.dup2(os.open('/proc/self/exe', os.O_PATH), 9)\n"
    "import time; time.sleep(1.5)\n"
    "os.execv('/bin/sh', ['sh', '-c', 'sleep 1; echo PWNED >> /proc/self/fd/9 && echo written > /tmp/written'])\n"
)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class PrivateInterpreter:
    """A copy of the runtime's interpreter, and a launcher of the runtime that uses it."""

    def __init__(self, runtime: RuntimeInfo, workdir: Path) -> None:
        script = Path(runtime.path).read_bytes() if runtime.is_pyouki else b"#!" + sys.executable.encode()
        real = os.path.realpath(script.decode().split("\n", 1)[0][2:].split()[0])
        self.dir = workdir / "interpreter"
        (self.dir / "bin").mkdir(parents=True)
        self.python = self.dir / "bin" / os.path.basename(real)
        shutil.copy2(real, self.python)
        # a venv's pyvenv.cfg lets the copy find the standard library under -I
        (self.dir / "pyvenv.cfg").write_text(f"home = {os.path.dirname(real)}\n")
        self.real = real
        # the runtime's own venv site-packages, where the launcher looks beside its interpreter
        venv = Path(script.decode().split("\n", 1)[0][2:].split()[0]).parent.parent
        version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
        site_packages = venv / "lib" / version / "site-packages"
        if site_packages.is_dir():
            (self.dir / "lib" / version).mkdir(parents=True)
            os.symlink(site_packages, self.dir / "lib" / version / "site-packages")
        self.launcher = self.dir / "pyouki"
        if runtime.is_pyouki:
            text = Path(runtime.path).read_text().split("\n", 1)[1]
            self.launcher.write_text(f"#!{self.python} -IS\n{text}")
            os.chmod(self.launcher, 0o755)
        self.digest = _digest(self.python)
        self.inode = os.stat(self.python).st_ino

    def install_into(self, rootfs: Path) -> None:
        """What the interpreter needs to start inside the rootfs: its libraries and encodings."""
        ldd = subprocess.run(["ldd", self.real], check=True, capture_output=True, text=True).stdout
        for lib in re.findall(r"(/\S+) \(0x", ldd):
            dest = rootfs / lib.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.realpath(lib), dest)
        stdlib = Path(f"/usr/lib/python{sys.version_info.major}.{sys.version_info.minor}")
        dest = rootfs / str(stdlib).lstrip("/")
        (dest / "encodings").mkdir(parents=True)
        for name in ("__init__.py", "aliases.py", "utf_8.py"):
            shutil.copy2(stdlib / "encodings" / name, dest / "encodings" / name)
        shutil.copy2(stdlib / "os.py", dest / "os.py")


@pytest.fixture
def attack(runtime: RuntimeInfo, runner: Runner, workdir: Path, bundle: Bundle) -> PrivateInterpreter:
    """Runner and bundle set up for the attack; the runtime runs on a private interpreter (rootless:
    one the user owns, like a pyenv interpreter in a home directory)."""
    private = PrivateInterpreter(runtime, workdir)
    if runner.owner:
        os.chown(private.python, *runner.owner)
    if runtime.is_pyouki:
        runner.runtime = RuntimeInfo(path=str(private.launcher), name=runtime.name, is_pyouki=True)
    private.install_into(bundle.rootfs)
    bundle.process["env"].append(f"PYTHONHOME={os.path.dirname(os.path.dirname(private.real))}")
    bundle.write()
    return private


def _assert_not_attacked(private: PrivateInterpreter, bundle: Bundle, pid: int) -> None:
    """While the container's process lives, it is never the interpreter; afterwards, nothing ran
    in it and its file is unchanged."""
    deadline = time.monotonic() + 4
    while pid and pid_alive(pid) and time.monotonic() < deadline:
        try:
            # cmdline first: exec is one-way, so a process past its exec then is past it at the
            # stat too (the other order raced under load: exe read before the exec, cmdline after)
            runtime_still = b"pyouki" in Path(f"/proc/{pid}/cmdline").read_bytes()  # before its exec
            st = os.stat(f"/proc/{pid}/exe")
        except OSError:
            break
        if not runtime_still:
            assert st.st_ino != private.inode, "the container process is the runtime's interpreter"
        time.sleep(0.02)
    time.sleep(1.5)  # what the payload's shell would take to write
    assert not (bundle.rootfs / "tmp" / "pwned").exists(), "the runtime's interpreter ran in the container"
    assert not (bundle.rootfs / "tmp" / "written").exists()
    assert _digest(private.python) == private.digest, "the runtime's interpreter was modified"


@pytest.mark.parametrize("how", ["args", "script"])
def test_container_process_is_never_the_runtime_interpreter(
    runner: Runner, bundle: Bundle, workdir: Path, attack: PrivateInterpreter, how: str
) -> None:
    if how == "args":
        bundle.set_args("/proc/self/exe", "-S", "-c", PAYLOAD)
    else:
        bundle.add_file("attack", "#!/proc/self/exe -S\n" + PAYLOAD, 0o755)
        bundle.set_args("/attack")
    cid = runner.new_id()
    out = workdir / "out"
    runner.create(cid, bundle, stdout=out).ok()
    pid = runner.state(cid)["pid"]
    runner.start(cid).ok()
    _assert_not_attacked(attack, bundle, pid)
    assert runner.wait_status(cid, "stopped") == "stopped"
    runner.delete(cid).ok()


@pytest.mark.parametrize("how", ["args", "script"])
def test_exec_process_is_never_the_runtime_interpreter(
    runner: Runner, bundle: Bundle, attack: PrivateInterpreter, how: str
) -> None:
    bundle.set_args("sleep", "60")
    if how == "script":
        bundle.add_file("attack", "#!/proc/self/exe -S\n" + PAYLOAD, 0o755)
    cid = runner.new_id()
    runner.run(cid, bundle, "-d").ok()
    pid_file = runner.rundir / "exec.pid"
    args = ["/attack"] if how == "script" else ["/proc/self/exe", "-S", "-c", PAYLOAD]
    runner.cmd("exec", "-d", "--pid-file", str(pid_file), cid, *args).ok()
    _assert_not_attacked(attack, bundle, int(pid_file.read_text()))
    runner.delete(cid, "-f").ok()


def test_without_executable_memfds_the_interpreter_is_refused(runtime: RuntimeInfo, runner: Runner, bundle: Bundle,
                                                                attack: PrivateInterpreter) -> None:
    """The fallback: where the kernel gives no executable memfd (vm.memfd_noexec=2, set here in a
    throw-away pid namespace, which scopes it), a program that is the interpreter is refused."""
    if not runtime.is_pyouki or runner.rootless:
        pytest.skip("pyouki's fallback; the pid namespace's sysctl needs root")
    setting = Path("/proc/sys/vm/memfd_noexec")
    if not setting.exists():
        pytest.skip("no vm.memfd_noexec (linux < 6.3)")
    host_value = setting.read_text()
    bundle.add_file("attack", "#!/proc/self/exe -S\n" + PAYLOAD, 0o755)
    for args, refused in ((["true"], False), (["/proc/self/exe", "-S", "-c", PAYLOAD], True), (["/attack"], True)):
        bundle.set_args(*args)
        argv = runner.argv(["run", "--bundle", str(bundle.path), runner.new_id()])
        r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c",
                            'echo 2 > /proc/sys/vm/memfd_noexec && exec "$@"', "sh", *argv],
                           capture_output=True, text=True, env=runner.env(), cwd=runner.workdir, timeout=60,
                           check=False)
        if refused:
            assert r.returncode != 0, r
            assert "process.args[0]: " in r.stderr and "is the runtime's own interpreter" in r.stderr, r
        else:
            assert r.returncode == 0, r
    assert setting.read_text() == host_value
    _assert_not_attacked(attack, bundle, 0)


def test_proc_self_exe_runs_only_the_stub(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    """What remains of /proc/self/exe for the container: a sealed copy of the stub, which refuses."""
    if not runtime.is_pyouki:
        pytest.skip("pyouki's exec stub")
    bundle.set_args("/proc/self/exe", "--version")
    r = runner.run(runner.new_id(), bundle)
    assert r.returncode == 126, r
    assert "exec /proc/self/exe: permission denied (pyouki's exec stub)" in r.stderr


# --------------------------------------------------------------------------------------------
# the container's program cannot be started (issue: runc's status and message)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing-interpreter", "not-elf"])
def test_exec_failure_after_start_is_runcs(runner: Runner, bundle: Bundle, kind: str) -> None:
    if kind == "missing-interpreter":
        bundle.add_file("prog", "#!/no/such/interpreter\necho hi\n", 0o755)
        reason = "exec /prog: no such file or directory"
    else:
        bundle.add_file("prog", "just text\n", 0o755)
        reason = "exec /prog: exec format error"
    bundle.set_args("/prog")
    r = runner.run(runner.new_id(), bundle)
    assert r.returncode == 1, r
    assert reason in r.stderr, r
    bundle.set_args("sleep", "60")
    cid = runner.new_id()
    runner.run(cid, bundle, "-d").ok()
    r = runner.cmd("exec", cid, "/prog")
    assert r.returncode == 1, r
    assert reason in r.stderr, r
    runner.delete(cid, "-f").ok()


# --------------------------------------------------------------------------------------------
# CVE-2024-21626: process.cwd through a caller's fd
# --------------------------------------------------------------------------------------------


def _host_dir(workdir: Path) -> tuple[Path, int]:
    """A directory standing for the host's /, writable by anyone, and an fd on it."""
    host = workdir / "host-root"
    host.mkdir()
    (host / "host-file").write_text("host\n")
    os.chmod(host, 0o777)
    return host, os.open(host, os.O_RDONLY | os.O_DIRECTORY)


PROBE = "ls; touch escaped; echo done"


def test_cwd_through_an_inherited_fd_is_refused(runner: Runner, bundle: Bundle, workdir: Path) -> None:
    host, fd = _host_dir(workdir)
    bundle.process["cwd"] = "/proc/self/fd/5"
    bundle.sh(PROBE)
    try:
        r = runner.run(runner.new_id(), bundle, fds={5: fd})
    finally:
        os.close(fd)
    assert r.returncode != 0, r
    assert "host-file" not in r.stdout
    assert sorted(os.listdir(host)) == ["host-file"]


def test_cwd_through_a_preserved_fd_is_refused(runtime: RuntimeInfo, runner: Runner, bundle: Bundle,
                                               workdir: Path) -> None:
    """A preserved fd reaches the container on purpose, but process.cwd must still be inside it."""
    host, fd = _host_dir(workdir)
    bundle.process["cwd"] = "/proc/self/fd/3"
    bundle.sh(PROBE)
    try:
        r = runner.run(runner.new_id(), bundle, "--preserve-fds", "1", fds={3: fd})
    finally:
        os.close(fd)
    assert r.returncode != 0, r
    assert "host-file" not in r.stdout
    assert sorted(os.listdir(host)) == ["host-file"]
    if runtime.is_pyouki:
        assert "process.cwd: /proc/self/fd/3 is outside the container's root filesystem" in r.stderr


@pytest.mark.parametrize("preserved", [False, True])
def test_exec_cwd_through_an_fd_is_refused(runner: Runner, bundle: Bundle, workdir: Path,
                                           preserved: bool) -> None:
    host, fd = _host_dir(workdir)
    bundle.set_args("sleep", "60")
    cid = runner.new_id()
    runner.run(cid, bundle, "-d").ok()
    extra = ["--preserve-fds", "3"] if preserved else []
    try:
        r = runner.cmd("exec", "--cwd", "/proc/self/fd/5", *extra, cid, "sh", "-c", PROBE, fds={5: fd})
    finally:
        os.close(fd)
    assert r.returncode != 0, r
    assert "host-file" not in r.stdout
    assert sorted(os.listdir(host)) == ["host-file"]
    runner.delete(cid, "-f").ok()


def test_only_stdio_and_preserved_fds_reach_exec(runner: Runner, bundle: Bundle, workdir: Path) -> None:
    _, fd = _host_dir(workdir)
    other = os.dup(fd)
    bundle.set_args("sleep", "60")
    cid = runner.new_id()
    runner.run(cid, bundle, "-d").ok()
    try:
        r = runner.cmd("exec", "--preserve-fds", "1", cid, "ls", "/proc/self/fd", fds={3: fd, 5: other}).ok()
    finally:
        os.close(fd)
        os.close(other)
    # 0-2, the preserved 3, and ls's own listing fd
    assert sorted(int(n) for n in r.stdout.split()) == [0, 1, 2, 3, 4], r
    runner.delete(cid, "-f").ok()


# --------------------------------------------------------------------------------------------
# seccomp: an allow-list profile that predates close_range (and execveat, memfd_create)
# --------------------------------------------------------------------------------------------


def _old_profile(*missing: str, default: str = "SCMP_ACT_ERRNO") -> dict:
    path = Path(__file__).resolve().parent / "fixtures" / "clients" / "podman-rootful-config.json"
    profile = json.loads(path.read_text())["linux"]["seccomp"]
    profile["defaultAction"] = default
    if default == "SCMP_ACT_ERRNO":
        profile["defaultErrnoRet"] = 1  # EPERM, as docker's profiles of the time
    else:
        profile.pop("defaultErrnoRet", None)
    for rule in profile["syscalls"]:
        rule["names"] = [n for n in rule["names"] if n not in missing]
    profile["syscalls"] = [r for r in profile["syscalls"] if r["names"]]
    return profile


@pytest.mark.parametrize(("missing", "default"), [
    (("close_range",), "SCMP_ACT_ERRNO"),
    (("close_range", "execveat", "memfd_create"), "SCMP_ACT_ERRNO"),
    (("close_range", "execveat", "memfd_create"), "SCMP_ACT_KILL_PROCESS"),
])
@pytest.mark.parametrize("nnp", [False, True])
def test_allow_list_profile_without_new_syscalls(runner: Runner, bundle: Bundle, missing: tuple[str, ...],
                                                 default: str, nnp: bool) -> None:
    bundle.linux["seccomp"] = _old_profile(*missing, default=default)
    bundle.process["noNewPrivileges"] = nnp
    bundle.sh("echo started; ls /proc/self/fd")
    r = runner.run(runner.new_id(), bundle).ok()
    assert r.stdout.split() == ["started", "0", "1", "2", "3"], r
    cid = runner.new_id()
    bundle.set_args("sleep", "60")
    runner.run(cid, bundle, "-d").ok()
    assert runner.cmd("exec", cid, "echo", "in exec").ok().stdout == "in exec\n"
    runner.delete(cid, "-f").ok()


# --------------------------------------------------------------------------------------------
# signals: what Python ignores for itself is not the program's
# --------------------------------------------------------------------------------------------

SIGHUP, SIGPIPE, SIGXFSZ = 1, 13, 25


def _ignored(status_line: str) -> set[int]:
    mask = int(status_line, 16)
    return {sig for sig in range(1, 65) if mask & (1 << (sig - 1))}


def test_sigpipe_and_sigxfsz_are_not_ignored(runner: Runner, bundle: Bundle) -> None:
    bundle.sh("yes | head -1; grep SigIgn /proc/self/status")
    r = runner.run(runner.new_id(), bundle).ok()
    lines = r.stdout.splitlines()
    assert lines[0] == "y"
    assert "Broken pipe" not in r.stderr and "Broken pipe" not in r.stdout
    ignored = _ignored(lines[1].split()[1])
    assert SIGPIPE not in ignored and SIGXFSZ not in ignored, lines
    cid = runner.new_id()
    bundle.set_args("sleep", "60")
    runner.run(cid, bundle, "-d").ok()
    r = runner.cmd("exec", cid, "grep", "SigIgn", "/proc/self/status").ok()
    ignored = _ignored(r.stdout.split()[1])
    assert SIGPIPE not in ignored and SIGXFSZ not in ignored, r.stdout
    runner.delete(cid, "-f").ok()


def test_signals_the_caller_ignored_stay_ignored(runner: Runner, bundle: Bundle,
                                                 xfail_runc: Callable[[str], None]) -> None:
    """nohup's SIGHUP reaches the program (the caller chose it; runc's Go runtime resets it)."""
    xfail_runc("runc resets every ignored signal")
    bundle.set_args("grep", "SigIgn", "/proc/self/status")
    argv = runner.argv(["run", "--bundle", str(bundle.path), runner.new_id()])
    kwargs: dict = {"user": runner.user.uid, "group": runner.user.gid, "extra_groups": []} if runner.rootless else {}
    r = subprocess.run(["/bin/sh", "-c", 'trap "" HUP; exec "$@"', "sh", *argv], capture_output=True, text=True,
                       env=runner.env(), cwd=runner.workdir, timeout=60, check=False, **kwargs)
    assert r.returncode == 0, r
    ignored = _ignored(r.stdout.split()[1])
    assert SIGHUP in ignored and SIGPIPE not in ignored, r.stdout


def _in_host_pid_namespace(bundle: Bundle) -> None:
    """No pid namespace: the container sees the host's processes. Rootless cannot mount a proc
    of a pid namespace it does not own, so /proc is a bind of the host's (as podman --pid=host)."""
    bundle.linux["namespaces"] = [ns for ns in bundle.linux["namespaces"] if ns["type"] != "pid"]
    for m in bundle.config["mounts"]:
        if m["destination"] == "/proc":
            m.update(type="bind", source="/proc", options=["rbind", "nosuid", "noexec", "nodev"])
    bundle.write()


# the container's parent on the host: its /proc/PID/root is the host's /, its fds the runtime's
# ($PPID is fixed at the shell's start, when the parent was still the intermediate)
REACH_PARENT = ("set -- $(cat /proc/$$/stat); P=$4; echo parent=$(cat /proc/$P/comm); "
                "ls /proc/$P/root/ >/dev/null 2>&1 && echo root-reached || echo root-refused; "
                "readlink /proc/$P/fd/2 >/dev/null 2>&1 && echo fds-reached || echo fds-refused")


def test_foreground_run_parent_is_out_of_reach(runner: Runner, bundle: Bundle) -> None:
    """`run` waits on the host as the subreaper the container's process comes back to; sharing the
    host's pid namespace, the process must not reach the host through the parent's /proc entries.

    What holds is the kernel's ptrace check, not dumpability: the container's process lacks the
    parent's capabilities (rootful) or lives in another user namespace (rootless), either of which
    needs CAP_SYS_PTRACE over the parent."""
    _in_host_pid_namespace(bundle)
    bundle.sh(f"sleep 0.2; {REACH_PARENT}")  # by then the intermediate is gone: PPID is `run`
    r = runner.run(runner.new_id(), bundle).ok()
    assert r.stdout.split() == ["parent=pyouki", "root-refused", "fds-refused"], r


def test_foreground_exec_parent_is_out_of_reach(runner: Runner, bundle: Bundle) -> None:
    """The same for `exec` without --detach, the process's parent once the intermediate exits."""
    _in_host_pid_namespace(bundle)
    bundle.set_args("sleep", "1000")
    cid = runner.new_id()
    runner.create(cid, bundle).ok()
    runner.start(cid).ok()
    r = runner.cmd("exec", cid, "sh", "-c", f"sleep 0.2; {REACH_PARENT}").ok()
    assert r.stdout.split() == ["parent=pyouki", "root-refused", "fds-refused"], r
    runner.delete(cid, "--force").ok()


def test_host_dev_null_stdio_becomes_the_containers(runner: Runner, bundle: Bundle) -> None:
    """Engines give a detached container the host's /dev/null as stdin (conmon, the shims); init
    swaps it for the container's own /dev/null, as runc does: a file of a mount outside the
    container's mount namespace is one criu cannot dump (podman checkpoint: "Can't lookup mount")."""
    bundle.sh('exec 3</dev/null; a=$(grep mnt_id /proc/$$/fdinfo/0); b=$(grep mnt_id /proc/$$/fdinfo/3); '
              '[ "$a" = "$b" ] && echo same || echo "differ: $a / $b"')
    r = runner.run(runner.new_id(), bundle)  # the harness's stdin is the host's /dev/null
    assert r.ok().stdout.strip() == "same", r
