"""Helpers for the lifecycle tests: build a busybox rootfs, make bundles, drive a runtime.

The runtime under test is named by ``PYOUKI_TEST_RUNTIME`` (a path); by default it is the
``pyouki`` script next to ``sys.executable``. Every helper here works for runc too, so the
suite can be proved against runc while pyouki is being written.

Nothing here mocks anything: the helpers run the real runtime binary, as root or as the
unprivileged test user, and observe real processes, mounts and files.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEST_USER = "pyouki-test"
BUSYBOX = "/bin/busybox"
# Marker put in the runtime's environment and in process.env of every bundle: every process
# a test starts (runtime, its helpers, the container) carries it, so leftovers can be found
# without guessing by name.
MARK_VAR = "PYOUKI_TEST_MARK"
DEFAULT_TIMEOUT = 60.0


# --------------------------------------------------------------------------------------------
# runtime and user
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeInfo:
    """The runtime binary under test."""

    path: str
    name: str
    is_pyouki: bool

    def default_root(self, mode: str, xdg_runtime_dir: str | None) -> str:
        """The state dir the runtime uses without ``--root`` (runc-compatible rule)."""
        if mode == "root":
            return f"/run/{self.name}"
        assert xdg_runtime_dir, "rootless default root needs XDG_RUNTIME_DIR"
        return f"{xdg_runtime_dir}/{self.name}"


def load_by_path(name: str, path: str) -> Any:
    """The module at path (relative to the repository) under name, loaded once and shared through
    sys.modules: the tiers' helpers are scripts too, and "systemd" as a package name would clash
    with python-systemd, so they are not imported as packages."""
    if name not in sys.modules:
        import importlib.util

        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def find_runtime() -> RuntimeInfo:
    """Resolve the runtime from ``PYOUKI_TEST_RUNTIME`` or the venv's ``pyouki`` script."""
    path = os.environ.get("PYOUKI_TEST_RUNTIME") or str(Path(sys.executable).parent / "pyouki")
    path = os.path.abspath(path)
    name = os.path.basename(path)
    is_pyouki = name.startswith("pyouki")
    # The runtime name doubles as its default state-dir name (/run/runc, /run/pyouki).
    return RuntimeInfo(path=path, name="pyouki" if is_pyouki else name, is_pyouki=is_pyouki)


@dataclass(frozen=True)
class TestUser:
    """The unprivileged user the rootless half of the suite runs as."""

    __test__ = False  # not a pytest test class

    name: str
    uid: int
    gid: int
    home: str
    subuid: tuple[int, int]
    subgid: tuple[int, int]


def _sub_range(path: str, name: str, uid: int) -> tuple[int, int]:
    for line in Path(path).read_text().splitlines():
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in (name, str(uid)):
            return int(parts[1]), int(parts[2])
    raise RuntimeError(f"{path}: no range for {name}")


def ensure_test_user(name: str = TEST_USER) -> TestUser:
    """Return the unprivileged test user, creating it (with subuid/subgid ranges) if missing."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-m", name], check=True)
        pw = pwd.getpwnam(name)
    return TestUser(
        name=name,
        uid=pw.pw_uid,
        gid=pw.pw_gid,
        home=pw.pw_dir,
        subuid=_sub_range("/etc/subuid", name, pw.pw_uid),
        subgid=_sub_range("/etc/subgid", name, pw.pw_uid),
    )


# --------------------------------------------------------------------------------------------
# rootfs and bundles
# --------------------------------------------------------------------------------------------


def build_rootfs_template(dest: Path) -> Path:
    """Build a busybox-static rootfs at ``dest`` (ENGINES.md section 1) and return it."""
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "root", "var", "run", "usr", "mnt"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, dest / "bin" / "busybox")
    os.chmod(dest / "bin" / "busybox", 0o755)
    applets = subprocess.run(
        [BUSYBOX, "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox" and not (dest / "bin" / applet).exists():
            os.symlink("busybox", dest / "bin" / applet)
    os.symlink("bin", dest / "sbin")
    os.symlink("../bin", dest / "usr" / "bin")
    os.symlink("../bin", dest / "usr" / "sbin")
    (dest / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n"
    )
    (dest / "etc" / "group").write_text("root:x:0:\nnobody:x:65534:\n")
    os.chmod(dest / "tmp", 0o1777)
    for d in ("", "bin", "etc", "root", "var", "run", "usr", "mnt", "proc", "sys", "dev"):
        os.chmod(dest / d, 0o755)
    return dest


def clone_rootfs(template: Path, dest: Path, owner: tuple[int, int] | None) -> Path:
    """Copy the template rootfs to ``dest``; the busybox binary is hard-linked to save space.

    With ``owner`` every entry but the shared busybox binary is chowned (rootless bundles are
    owned by the user, as podman's are); busybox stays root-owned 0755, readable by all.
    """

    def _copy(src: str, dst: str) -> None:
        if os.path.basename(src) == "busybox":
            try:
                os.link(src, dst)
                return
            except OSError:
                pass
        shutil.copy2(src, dst)

    shutil.copytree(template, dest, symlinks=True, copy_function=_copy)
    os.chmod(dest, 0o755)
    if owner is not None:
        for dirpath, dirnames, filenames in os.walk(dest):
            os.lchown(dirpath, *owner)
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                if p != str(dest / "bin" / "busybox"):
                    os.lchown(p, *owner)
    return dest


@dataclass
class Bundle:
    """An OCI bundle on disk: ``path/config.json`` plus ``path/rootfs``."""

    path: Path
    config: dict[str, Any]
    owner: tuple[int, int] | None = None

    @property
    def rootfs(self) -> Path:
        """Absolute path of the rootfs directory."""
        return self.path / "rootfs"

    @property
    def config_path(self) -> Path:
        """Path of config.json."""
        return self.path / "config.json"

    def write(self) -> None:
        """Write ``config`` to config.json (owned by the bundle owner)."""
        self.config_path.write_text(json.dumps(self.config, indent=2))
        if self.owner is not None:
            os.chown(self.config_path, *self.owner)

    def set_args(self, *args: str) -> None:
        """Set process.args and write the config."""
        self.config["process"]["args"] = list(args)
        self.write()

    def sh(self, script: str) -> None:
        """Run ``script`` with /bin/sh -c as the container process and write the config."""
        self.set_args("sh", "-c", script)

    @property
    def linux(self) -> dict[str, Any]:
        """The config's ``linux`` object (created if missing)."""
        return self.config.setdefault("linux", {})

    @property
    def process(self) -> dict[str, Any]:
        """The config's ``process`` object."""
        return self.config["process"]

    def namespaces(self) -> list[str]:
        """Types of the namespaces in linux.namespaces."""
        return [ns["type"] for ns in self.linux.get("namespaces", [])]

    def add_namespace(self, ns_type: str, path: str | None = None) -> None:
        """Add (or replace) a namespace entry."""
        nss = [ns for ns in self.linux.get("namespaces", []) if ns["type"] != ns_type]
        entry: dict[str, str] = {"type": ns_type}
        if path:
            entry["path"] = path
        nss.append(entry)
        self.linux["namespaces"] = nss

    def add_mount(self, destination: str, type_: str, source: str, options: Sequence[str]) -> int:
        """Append a mount and return its index in ``mounts``."""
        self.config.setdefault("mounts", []).append(
            {"destination": destination, "type": type_, "source": source, "options": list(options)}
        )
        return len(self.config["mounts"]) - 1

    def add_file(self, rel: str, content: str, mode: int = 0o644) -> Path:
        """Create a file inside the rootfs (owned by the bundle owner)."""
        p = self.rootfs / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
        os.chmod(p, mode)
        if self.owner is not None:
            os.chown(p, *self.owner)
            os.chown(p.parent, *self.owner)
        return p

    def add_dir(self, rel: str) -> Path:
        """Create a directory inside the rootfs (owned by the bundle owner)."""
        p = self.rootfs / rel.lstrip("/")
        p.mkdir(parents=True, exist_ok=True)
        if self.owner is not None:
            os.chown(p, *self.owner)
        return p


# --------------------------------------------------------------------------------------------
# running the runtime
# --------------------------------------------------------------------------------------------


@dataclass
class Result:
    """What one runtime invocation returned."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def ok(self) -> Result:
        """Assert the command succeeded and return self (for chaining)."""
        assert self.returncode == 0, (
            f"{' '.join(self.args)} exited {self.returncode}\nstdout: {self.stdout}\nstderr: {self.stderr}"
        )
        return self

    def __str__(self) -> str:
        return f"rc={self.returncode} argv={self.args}\nstdout={self.stdout!r}\nstderr={self.stderr!r}"


@dataclass
class Runner:
    """Runs the runtime for one test, as root (mode "root") or as the test user ("rootless").

    Each runner has its own work dir, ``XDG_RUNTIME_DIR`` and ``--root`` state dir, and remembers
    every container id it used so ``cleanup`` can remove whatever a failing test left.
    """

    runtime: RuntimeInfo
    mode: str
    user: TestUser
    workdir: Path
    mark: str = field(default_factory=lambda: uuid.uuid4().hex)
    ids: list[str] = field(default_factory=list)
    used_default_root: bool = False

    def __post_init__(self) -> None:
        self.xdg = self.workdir / "xdg"
        self.rundir = self.workdir / "run"
        self.state_root = self.rundir / "state"
        self.xdg.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.rundir.mkdir(mode=0o755, parents=True, exist_ok=True)
        if self.rootless:
            os.chown(self.xdg, self.user.uid, self.user.gid)
            os.chown(self.rundir, self.user.uid, self.user.gid)
        os.chmod(self.xdg, 0o700)

    # -- identity ------------------------------------------------------------------------------

    @property
    def rootless(self) -> bool:
        """True when the runtime runs as the unprivileged user."""
        return self.mode == "rootless"

    @property
    def owner(self) -> tuple[int, int] | None:
        """(uid, gid) files handed to the runtime must belong to, or None for root."""
        return (self.user.uid, self.user.gid) if self.rootless else None

    def new_id(self, prefix: str = "c") -> str:
        """A container id unique on this machine (default state dirs are shared)."""
        cid = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.ids.append(cid)
        return cid

    def env(self) -> dict[str, str]:
        """The environment the runtime gets."""
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", MARK_VAR: self.mark}
        if self.rootless:
            env.update(XDG_RUNTIME_DIR=str(self.xdg), HOME=self.user.home, USER=self.user.name)
        else:
            env.update(HOME="/root")
        return env

    def _spawn_kwargs(self) -> dict[str, Any]:
        if self.rootless:
            return {"user": self.user.uid, "group": self.user.gid, "extra_groups": []}
        return {}

    def argv(self, args: Sequence[str], root: str | None | bool = True) -> list[str]:
        """Full argv: runtime path, ``--root`` (True: this runner's, str: that dir, None: none)."""
        argv = [self.runtime.path]
        if root is None:
            self.used_default_root = True
        if root is True:
            argv += ["--root", str(self.state_root)]
        elif isinstance(root, str):
            argv += ["--root", root]
        return argv + list(args)

    # -- invocation ----------------------------------------------------------------------------

    def cmd(
        self,
        *args: str,
        root: str | None | bool = True,
        stdout: Path | None = None,
        stdin: Any = subprocess.DEVNULL,
        pass_fds: Sequence[int] = (),
        cwd: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        env: dict[str, str] | None = None,
        fds: dict[int, int] | None = None,
    ) -> Result:
        """Run the runtime and wait for it.

        ``fds`` maps a target fd number in the runtime to an fd of the test process (e.g.
        ``{3: fd}`` for ``--preserve-fds 1``); a small shell wrapper places them.

        Output goes to files, never pipes: a container started by ``create`` or ``run -d``
        inherits the runtime's stdio and would keep a pipe open long after the runtime exits.
        With ``stdout`` the caller's file receives the runtime's (and the container's) output.
        """
        argv = self.argv(args, root)
        if fds:
            redirs = " ".join(f"{t}<&{s} {s}<&-" for t, s in fds.items())
            argv = ["/bin/bash", "-c", f'exec "$@" {redirs}', "bash", *argv]  # dash only knows fds 0-9
            pass_fds = tuple(pass_fds) + tuple(fds.values())
        out_path = stdout or (self.workdir / f"out-{uuid.uuid4().hex[:8]}")
        err_path = self.workdir / f"err-{uuid.uuid4().hex[:8]}"
        with open(out_path, "ab") as out, open(err_path, "wb") as err:
            start = out.tell()
            proc = subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=out,
                stderr=err,
                pass_fds=tuple(pass_fds),
                cwd=str(cwd or self.workdir),
                env=env if env is not None else self.env(),
                **self._spawn_kwargs(),
            )
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(f"{' '.join(argv)}: no exit within {timeout} s") from None
        with open(out_path, "rb") as f:
            f.seek(start)
            stdout_text = f.read().decode(errors="replace")
        stderr_text = err_path.read_text(errors="replace")
        err_path.unlink()
        if stdout is None:
            out_path.unlink()
        return Result(argv, rc, stdout_text, stderr_text)

    def popen(
        self,
        *args: str,
        root: str | None | bool = True,
        stdout: Any = subprocess.PIPE,
        stderr: Any = subprocess.PIPE,
        stdin: Any = subprocess.DEVNULL,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start the runtime without waiting (foreground ``run``, signal forwarding)."""
        return subprocess.Popen(
            self.argv(args, root),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            cwd=str(cwd or self.workdir),
            env=self.env(),
            **self._spawn_kwargs(),
        )

    # -- verbs ---------------------------------------------------------------------------------

    def create(
        self,
        cid: str,
        bundle: Bundle,
        *extra: str,
        stdout: Path | None = None,
        **kw: Any,
    ) -> Result:
        """``create --bundle B [extra] ID``; ``stdout`` later holds the container's output."""
        if cid not in self.ids:
            self.ids.append(cid)
        return self.cmd("create", "--bundle", str(bundle.path), *extra, cid, stdout=stdout, **kw)

    def start(self, cid: str, **kw: Any) -> Result:
        """``start ID``."""
        return self.cmd("start", cid, **kw)

    def kill(self, cid: str, *extra: str, **kw: Any) -> Result:
        """``kill ID [SIG]`` (extra may hold ``--all`` and/or the signal)."""
        flags = [a for a in extra if a.startswith("-")]
        rest = [a for a in extra if not a.startswith("-")]
        return self.cmd("kill", *flags, cid, *rest, **kw)

    def delete(self, cid: str, *extra: str, **kw: Any) -> Result:
        """``delete [extra] ID``."""
        return self.cmd("delete", *extra, cid, **kw)

    def run(self, cid: str, bundle: Bundle, *extra: str, **kw: Any) -> Result:
        """``run --bundle B [extra] ID`` (foreground unless extra has -d)."""
        if cid not in self.ids:
            self.ids.append(cid)
        return self.cmd("run", "--bundle", str(bundle.path), *extra, cid, **kw)

    def state(self, cid: str, **kw: Any) -> dict[str, Any]:
        """``state ID`` parsed; asserts it succeeded."""
        r = self.cmd("state", cid, **kw).ok()
        return json.loads(r.stdout)

    def status(self, cid: str, **kw: Any) -> str | None:
        """The container's status, or None when ``state`` fails (no such container)."""
        r = self.cmd("state", cid, **kw)
        if r.returncode != 0:
            return None
        return str(json.loads(r.stdout)["status"])

    def wait_status(self, cid: str, want: str, timeout: float = 20.0, **kw: Any) -> str | None:
        """Poll ``state`` until the status is ``want``; return the last status seen."""
        deadline = time.monotonic() + timeout
        st = self.status(cid, **kw)
        while st != want and time.monotonic() < deadline:
            time.sleep(0.05)
            st = self.status(cid, **kw)
        return st

    def list_ids(self, **kw: Any) -> list[str]:
        """Ids from ``list -q``."""
        return self.cmd("list", "-q", **kw).ok().stdout.split()

    # -- nothing left behind ---------------------------------------------------------------------

    def leftover_pids(self) -> list[int]:
        """Pids of live (non-zombie) processes carrying this runner's marker."""
        return marked_pids(self.mark)

    def state_entries(self, root: Path | str | None = None) -> list[str]:
        """Entries of the state dir (empty when it does not exist)."""
        p = Path(root or self.state_root)
        # .cache holds pyouki's compiled seccomp programs: the runtime's, not a container's
        return sorted(e for e in os.listdir(p) if e != ".cache") if p.is_dir() else []

    def cleanup(self) -> None:
        """Force-delete every container this runner touched and kill stragglers."""
        roots: list[str | None | bool] = [True, None] if self.used_default_root else [True]
        known = set(self.state_entries())
        stray: list[int] = []
        for cid in dict.fromkeys(self.ids + sorted(known)):
            if not self.used_default_root and cid not in known:
                continue
            for root in roots:
                try:
                    r = self.cmd("state", "--", cid, root=root, timeout=20)
                    if r.returncode == 0:
                        stray.append(int(json.loads(r.stdout).get("pid") or 0))
                    # "--": an id starting with "-" must not be taken for an option
                    self.cmd("delete", "--force", "--", cid, root=root, timeout=20)
                except (AssertionError, ValueError):
                    pass
        # runc's waiting "runc init" has a clean environment (no marker): kill by recorded pid
        for pid in stray:
            if pid > 0 and pid_alive(pid) and MARK_VAR.encode() not in _environ(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        while self.leftover_pids() and time.monotonic() < deadline:
            for pid in self.leftover_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# observation helpers
# --------------------------------------------------------------------------------------------


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].split(b" ", 1)[0].decode()


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    st = _proc_state(pid)
    return st is not None and st not in ("Z", "X")


def wait_pid_gone(pid: int, timeout: float = 10.0) -> bool:
    """Poll until ``pid`` is gone or a zombie; return True if it went."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not pid_alive(pid)


def _environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return b""


def marked_pids(mark: str) -> list[int]:
    """Live pids whose environment contains ``PYOUKI_TEST_MARK=mark``."""
    needle = f"{MARK_VAR}={mark}".encode()
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in env.split(b"\0") and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def proc_status_field(pid: int, name: str) -> str | None:
    """A field of /proc/PID/status (e.g. "NoNewPrivs"), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == name:
                return value.strip()
    except OSError:
        return None
    return None


def mounts_under(prefixes: Iterable[str | Path]) -> list[str]:
    """Mount points in the host's /proc/self/mountinfo at or below any of ``prefixes``."""
    pre = [str(p).rstrip("/") for p in prefixes]
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].replace("\\040", " ")
        if any(mp == p or mp.startswith(p + "/") for p in pre):
            found.append(mp)
    return found


def cgroup_leftovers(names: list[str]) -> list[str]:
    """Cgroup directories (three levels deep in every hierarchy, and under our own cgroup) whose
    name carries one of names (a container id: where a killed runtime would have left its cgroup)."""
    found = []
    roots = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype = line.partition(" - ")[2].split()[0]
        if fstype in ("cgroup", "cgroup2"):
            roots.append(fields[4])
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrl, path = line.split(":", 2)
        own[ctrl] = path
    for root in roots:
        tops = [Path(root)]
        for path in own.values():
            candidate = Path(root + path)
            if path != "/" and candidate.is_dir():
                tops.append(candidate)
        for top in tops:
            found.extend(_dirs_named(str(top), names, 3))
    return sorted(set(found))


def _dirs_named(top: str, names: list[str], depth: int) -> list[str]:
    """Directories below top (depth levels) whose name carries one of names; other tests'
    cgroups come and go meanwhile: a directory that vanishes is skipped."""
    found = []
    try:
        entries = [e for e in os.scandir(top) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []
    for e in entries:
        if any(n in e.name for n in names):
            found.append(e.path)
        if depth > 1:
            found.extend(_dirs_named(e.path, names, depth - 1))
    return found


def mountinfo_lines() -> set[str]:
    """The host's mountinfo as a set of "mountpoint fstype source" strings."""
    out = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fs = right.split()
        out.add(f"{left.split()[4]} {fs[0]} {fs[1] if len(fs) > 1 else ''}")
    return out


def detach_mounts_under(prefix: str | Path) -> None:
    """Lazily unmount everything below ``prefix`` (deepest first) before removing it."""
    for mp in sorted(mounts_under([prefix]), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], check=False, capture_output=True)


def assert_failed_cleanly(
    runtime: RuntimeInfo,
    result: Result,
    *fragments: str,
) -> None:
    """Assert a failed command: non-zero exit, and for pyouki the one-line message contract.

    ``fragments`` must each appear in pyouki's message (a JSON path, a file, an id).
    """
    assert result.returncode != 0, f"expected failure, got {result}"
    if not runtime.is_pyouki:
        return
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"pyouki must print exactly one error line, got {result.stderr!r}"
    line = lines[0]
    assert line.startswith("pyouki: "), line
    msg = line[len("pyouki: ") :]
    assert msg and not msg[0].isupper(), f"message must start lowercase: {line!r}"
    assert not msg.endswith("."), f"message must not end with a period: {line!r}"
    for frag in fragments:
        assert frag in msg, f"{frag!r} not named in {line!r}"


def read_json_log(path: Path) -> list[dict[str, Any]]:
    """Parse a ``--log-format json`` file: one JSON object per line."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        if line.strip():
            entries.append(json.loads(line))
    return entries


# A shell prologue for running a reference runtime (crun) inside `unshare -m --propagation private`:
# a throw-away /dev with fresh nodes, so whatever that runtime does to the devices it binds or
# creates stays in a tmpfs that disappears with the mount namespace. Its stdio must not be the
# host's /dev/null either: crun 1.8 with a user namespace chowns the container's stdio fds to the
# container's root, /dev/null included (runc skips it), so give it pipes (`input=""`).
THROWAWAY_DEV = (
    "mount -t tmpfs -o mode=755,nosuid tmpfs /dev && "
    + "".join(f"mknod -m 666 /dev/{name} c {major} {minor} && " for name, major, minor in (
        ("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)))
)
