"""A real systemd for tests: a cached debootstrapped Debian booted with systemd-nspawn.

Usable as a library (``build_rootfs``, ``booted``) and as a command for CI and Vagrant::

    python tests/systemd/nspawn.py build          # debootstrap once, cache a tarball
    python tests/systemd/nspawn.py run -- CMD...  # boot, run CMD rootful in /src, power off
    python tests/systemd/nspawn.py run --user -- CMD...   # same, as the logged-in test user

The host's PID 1 need not be systemd: nspawn runs with ``--register=no --keep-unit`` and the
container gets a pure cgroup2 tree (``SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1``) with a system
manager, logind and, through a PAM login, a user manager. See /work/shared/SYSTEMD.md.

The tarball is extracted once into the cache (``NAME.d``) and booted with
``--volatile=overlay``: writes go to a tmpfs, so the tree stays clean across boots.
Side effects are undone on every exit path: the container is powered off (or its init
killed) and the ``/payload`` and ``/supervisor`` cgroups nspawn creates on the host are removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What the container needs: systemd + logind + dbus (system and user bus), python3 with
# jeepney for pyouki's D-Bus client, and what pyouki itself would need to run inside.
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "dbus-user-session", "libpam-systemd",
    "python3", "python3-venv", "python3-pytest", "python3-jeepney", "python3-click",
    "python3-prctl", "python3-platformdirs",
    "uidmap", "procps", "iproute2", "util-linux",
)
# pyouki's dependencies without a Debian package: pure-python wheels fetched with the host's
# pip and unpacked into the rootfs's site-packages at build time.
WHEELS = ("pyseccomp==0.1.2",)
TEST_USER = "tester"
TEST_UID = 1000
# Bump when the rootfs set-up below changes: it is part of the cache key.
SETUP_VERSION = "2"
BOOT_TIMEOUT = 30.0
POWEROFF_TIMEOUT = 20.0


class NspawnError(Exception):
    """The nspawn tier could not build, boot or drive its container."""


def cache_dir() -> Path:
    """Where the rootfs tarball is kept: ``$PYOUKI_TEST_CACHE`` or /var/cache/pyouki-tests."""
    return Path(os.environ.get("PYOUKI_TEST_CACHE", "/var/cache/pyouki-tests"))


def tarball_path() -> Path:
    """The cached rootfs tarball; its name changes whenever the package list or set-up does."""
    key = hashlib.sha256(" ".join((SUITE, SETUP_VERSION, *PACKAGES, *WHEELS)).encode()).hexdigest()[:12]
    return cache_dir() / f"nspawn-{SUITE}-{key}.tar.zst"


def missing_tools() -> list[str]:
    """Host tools this tier needs that are not installed (see APT_PACKAGES)."""
    tools = ("systemd-nspawn", "debootstrap", "nsenter", "zstd", "tar")
    return [t for t in tools if shutil.which(t) is None]


def install_missing_tools() -> str | None:
    """Install this tier's host packages (APT_PACKAGES) if any tool is missing; return why the tier
    cannot run here (for pytest.skip), or None when it can."""
    if os.geteuid() != 0:
        return "the nspawn tier needs root (systemd-nspawn, debootstrap)"
    if not missing_tools():
        return None
    if shutil.which("apt-get") is None:
        return f"cannot install {', '.join(missing_tools())}: no apt-get"
    lines = (Path(__file__).parent / "APT_PACKAGES").read_text().splitlines()
    packages = [p.strip() for p in lines if p.strip() and not p.startswith("#")]
    res = subprocess.run(["apt-get", "install", "-y", *packages], capture_output=True, text=True, timeout=600)
    if res.returncode != 0 or missing_tools():
        return f"systemd-nspawn cannot be installed: {res.stderr.strip()[-300:]}"
    return None


def _run(argv: Sequence[str], timeout: float, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a host command; a failure raises NspawnError with its stderr tail."""
    try:
        res = subprocess.run(argv, text=True, capture_output=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    except subprocess.TimeoutExpired as e:
        raise NspawnError(f"{argv[0]} timed out after {timeout:.0f} s") from e
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-15:]
        raise NspawnError(f"{' '.join(argv[:3])}... failed with status {res.returncode}:\n" + "\n".join(tail))
    return res


def _configure_rootfs(root: Path) -> None:
    """Make the fresh debootstrap bootable fast and give it an unprivileged test user."""
    # A fixed machine-id avoids first-boot logic (systemd-firstboot may prompt).
    (root / "etc/machine-id").write_text("5a1e7c0ffee0000000000000000c0de1\n")
    (root / "etc/hostname").write_text("pyouki-test\n")
    # Units that only slow the boot or wait for hardware that nspawn does not have.
    for unit in ("systemd-firstboot.service", "getty@.service", "console-getty.service",
                 "systemd-networkd-wait-online.service", "apt-daily.timer", "apt-daily-upgrade.timer",
                 "dpkg-db-backup.timer", "e2scrub_all.timer", "fstrim.timer"):
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    journald = root / "etc/systemd/journald.conf.d"
    journald.mkdir(parents=True, exist_ok=True)
    (journald / "volatile.conf").write_text("[Journal]\nStorage=volatile\n")
    # Debian's user@.service delegates only memory and pids; delegate what runtimes use.
    dropin = root / "etc/systemd/system/user@.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "delegate.conf").write_text("[Service]\nDelegate=cpu cpuset io memory pids\n")
    _run(["chroot", str(root), "useradd", "-m", "-u", str(TEST_UID), "-s", "/bin/bash", TEST_USER], 60)
    for name in ("etc/subuid", "etc/subgid"):
        (root / name).write_text(f"{TEST_USER}:100000:65536\n")
    # Allows `loginctl enable-linger`-like behaviour without logind: not needed for PAM logins,
    # but lets a test start the user manager without a login too.
    linger = root / "var/lib/systemd/linger"
    linger.mkdir(parents=True, exist_ok=True)
    _run(["chroot", str(root), "apt-get", "clean"], 60)
    _install_wheels(root)


def _install_wheels(root: Path) -> None:
    """Unpack WHEELS (pure python, so a wheel is a site-packages tree) into the rootfs."""
    import zipfile

    site = root / "usr/local/lib/python3.11/dist-packages"
    site.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
              "-d", tmp, *WHEELS], 300)
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as z:
                z.extractall(site)


def build_rootfs(force: bool = False, log: bool = True) -> Path:
    """Debootstrap the test rootfs once and cache it as a zstd tarball; return the tarball path.

    Concurrent callers serialize on a lock file, so CI jobs build it once.
    """
    dest = tarball_path()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest.parent / ".build.lock"):
        if dest.exists() and not force:
            return dest
        bad = missing_tools()
        if bad:
            raise NspawnError(f"missing host tools: {', '.join(bad)} (apt-get install -y "
                              f"{' '.join(_apt_packages())})")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="rootfs-build-", dir=dest.parent) as tmp:
            root = Path(tmp) / "root"
            if log:
                print(f"debootstrapping {SUITE} into {root} (once, ~1 min)", file=sys.stderr)
            _run(["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES),
                  SUITE, str(root), MIRROR], 900)
            _configure_rootfs(root)
            part = dest.with_suffix(".part")
            _run(["tar", "--zstd", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(part), "."],
                 300)
            part.rename(dest)
        _prune_old(dest)
        if log:
            print(f"cached {dest} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return dest


def _prune_old(current: Path) -> None:
    """Remove rootfs tarballs and trees of older set-ups from the cache."""
    stem = current.name.removesuffix(".tar.zst")
    for old in current.parent.glob(f"nspawn-{SUITE}-*"):
        if old.name not in (current.name, stem + ".d"):
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)


def _apt_packages() -> list[str]:
    text = (Path(__file__).parent / "APT_PACKAGES").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on path for the duration of the block."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a slow reaper (PID 1 here is not systemd)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def cleanup_host_cgroups() -> list[str]:
    """Remove the ``payload``/``supervisor`` cgroups nspawn leaves at the host's hierarchy roots.

    Removes only empty cgroups, deepest first; returns the ones that could not be removed.
    """
    left: list[str] = []
    base = Path("/sys/fs/cgroup")
    tops = [base / n for n in ("payload", "supervisor")]
    if base.is_dir():
        for h in base.iterdir():
            tops += [h / "payload", h / "supervisor"]
    for top in tops:
        if not top.is_dir():
            continue
        dirs = sorted((Path(d) for d, _, _ in os.walk(top)), key=lambda p: len(p.parts), reverse=True)
        for d in dirs:
            try:
                d.rmdir()
            except OSError as e:
                left.append(f"{d}: {e.strerror}")
    return left


@dataclass
class Result:
    """What a command inside the container did."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> Result:
        """Raise NspawnError with the output if the command failed."""
        if self.returncode != 0:
            raise NspawnError(f"{' '.join(self.argv)} exited {self.returncode}\n"
                              f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}")
        return self


@dataclass
class Machine:
    """A booted nspawn container; drive it with ``run``, stop it with ``poweroff``."""

    root: Path
    name: str
    proc: subprocess.Popen[bytes]
    leader: int
    log_path: Path
    boot_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def run(self, argv: Sequence[str], *, user: bool = False, env: dict[str, str] | None = None,
            timeout: float = 60.0, cwd: str = "/src") -> Result:
        """Run argv in a fresh transient service: as root, or with ``user`` through a PAM login.

        A PAM login (``PAMName=login``) makes logind start the user manager and gives the
        command ``XDG_RUNTIME_DIR`` and ``DBUS_SESSION_BUS_ADDRESS``, as a real login would.
        """
        cmd = ["nsenter", "-t", str(self.leader), "-a", "systemd-run", "-P", "--wait", "-q",
               f"--working-directory={cwd}"]
        if user:
            cmd += ["-p", "PAMName=login", f"--uid={TEST_UID}"]
        for k, v in (env or {}).items():
            cmd.append(f"--setenv={k}={v}")
        cmd += ["--", *argv]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                 stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise NspawnError(f"{' '.join(argv)} in {self.name} timed out after {timeout:.0f} s") from e
        return Result(list(argv), res.returncode, res.stdout, res.stderr)

    def state(self) -> str:
        """What ``systemctl is-system-running`` says inside the container."""
        res = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "systemctl", "is-system-running"],
                             capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
        return res.stdout.strip()

    def poweroff(self) -> None:
        """Power the container off cleanly; kill its init if that does not finish in time."""
        if self.proc.poll() is None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(["nsenter", "-t", str(self.leader), "-a", "systemctl", "poweroff"],
                               capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
            try:
                self.proc.wait(POWEROFF_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.notes.append("poweroff timed out: killed the container's init")
                # Killing a pid namespace's init kills every process in it.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.leader, signal.SIGKILL)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)


def prepare_tree(tarball: Path) -> Path:
    """The tarball extracted once next to it (``NAME.d``); containers boot it read-only.

    Extracting ~270 MB takes 1-12 s depending on the disk, so it is done once per cache,
    not per boot; boots use ``--volatile=overlay`` and never modify the tree.
    """
    tree = tarball.with_name(tarball.name.removesuffix(".tar.zst") + ".d")
    stamp = tree / ".pyouki-complete"
    with _locked(tarball.parent / ".build.lock"):
        if stamp.exists():
            return tree
        shutil.rmtree(tree, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix="extract-", dir=tarball.parent))
        try:
            _run(["tar", "--zstd", "--numeric-owner", "--xattrs", "-C", str(tmp), "-xf", str(tarball)], 300)
            tmp.chmod(0o755)
            (tmp / ".pyouki-complete").touch()
            tmp.rename(tree)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return tree


def _wait_booted(machine: Machine, deadline: float) -> None:
    """Find the container's init (the nspawn child named systemd) and wait until it is up."""
    while time.monotonic() < deadline:
        if machine.proc.poll() is not None:
            raise NspawnError(f"systemd-nspawn exited with {machine.proc.returncode}: "
                              + machine.log_path.read_text(errors="replace")[-2000:])
        if not machine.leader:
            # nspawn forks an outer child which becomes the container's PID 1 (systemd).
            for child in _children(machine.proc.pid):
                if _comm(child) == "systemd":
                    machine.leader = child
        if machine.leader and machine.state() in ("running", "degraded"):
            return
        time.sleep(0.05)
    raise NspawnError(f"container {machine.name} did not finish booting in {BOOT_TIMEOUT:.0f} s: "
                      + machine.log_path.read_text(errors="replace")[-2000:])


def kill_stale(root: Path) -> list[int]:
    """Kill containers of root left by a test process that died without cleaning up.

    Called with the boot lock held, so any nspawn still running on root is stale. Killing the
    container's init (a pid namespace's PID 1) kills everything in it; nspawn then exits.
    """
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or os.path.basename(argv[0]) != b"systemd-nspawn" or str(root).encode() not in argv:
            continue
        pid = int(entry.name)
        for child in _children(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + POWEROFF_TIMEOUT
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        killed.append(pid)
    return killed


@contextlib.contextmanager
def booted(repo: Path, tarball: Path | None = None,
           binds: Sequence[tuple[str, str]] = (), syscalls: Sequence[str] = ()) -> Iterator[Machine]:
    """Boot the cached rootfs with repo bind-mounted read-only at /src; always tear down.

    binds are more read-only (host path, container path) bind mounts, e.g. the host's
    busybox for container rootfs trees built inside. syscalls are more names or ``@groups`` the
    container may call beyond nspawn's default filter (e.g. ``@keyring``: runc creates a session
    keyring for every container).

    Only one container boots at a time on a host (nspawn without a host systemd always uses
    the same ``/payload`` cgroups), so this holds a lock for its whole life.
    """
    tarball = tarball or build_rootfs()
    root = prepare_tree(tarball)
    with _locked(tarball.parent / ".boot.lock"):
        if kill_stale(root):
            cleanup_host_cgroups()
        name = f"pyouki-test-{os.getpid()}"
        fd, log_name = tempfile.mkstemp(prefix="nspawn-", suffix=".log")
        os.close(fd)
        log_path = Path(log_name)
        machine: Machine | None = None
        try:
            env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")
            started = time.monotonic()
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    ["systemd-nspawn", "-q", "-b", "-D", str(root), "-M", name, "--register=no",
                     "--keep-unit", "--console=passive", "--volatile=overlay", f"--bind-ro={repo}:/src",
                     *(f"--bind-ro={host}:{inside}" for host, inside in binds),
                     "--system-call-filter=" + " ".join(("bpf", *syscalls))],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True)
            machine = Machine(root, name, proc, 0, log_path)
            _wait_booted(machine, started + BOOT_TIMEOUT)
            machine.boot_seconds = time.monotonic() - started
            yield machine
        finally:
            if machine is not None:
                machine.poweroff()
            left = cleanup_host_cgroups()
            log_path.unlink(missing_ok=True)
            if left:
                raise NspawnError("could not remove host cgroups: " + "; ".join(left))


def main(argv: list[str]) -> int:
    """Command-line entry: ``build [--force]`` or ``run [--user] -- CMD...``."""
    import argparse

    p = argparse.ArgumentParser(prog="nspawn.py", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="debootstrap and cache the rootfs")
    b.add_argument("--force", action="store_true")
    r = sub.add_parser("run", help="boot, run a command in /src, power off")
    r.add_argument("--user", action="store_true", help=f"run as {TEST_USER} through a PAM login")
    r.add_argument("--repo", default=str(Path(__file__).resolve().parents[2]))
    r.add_argument("command", nargs="+")
    args = p.parse_args(argv)
    if args.cmd == "build":
        print(build_rootfs(force=args.force))
        return 0
    with booted(Path(args.repo)) as m:
        print(f"booted {m.name} in {m.boot_seconds:.2f} s", file=sys.stderr)
        res = m.run(args.command, user=args.user, timeout=600)
        sys.stdout.write(res.stdout)
        sys.stderr.write(res.stderr)
        return res.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
