"""Set-up for the benchmark: the test user, a busybox rootfs, bundles, and runtime wrappers.

Nothing here is timed. Commands run through ``subprocess`` with their output captured, so a
failing step names itself instead of printing into the table.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass

BUSYBOX = "/bin/busybox"
TEST_USER = "pyouki-test"
SYS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# crun refuses cgroup v1 "hybrid" mode while cgroup2 is mounted at /sys/fs/cgroup/unified; in a
# private mount namespace the mount can be dropped (root) or hidden under a tmpfs (in a user
# namespace, where the inherited mount is locked).
CRUN_HYBRID = """#!/bin/sh
exec /usr/bin/unshare --mount --propagation private /bin/sh -c \\
  'umount /sys/fs/cgroup/unified 2>/dev/null || mount -t tmpfs -o ro none /sys/fs/cgroup/unified; \\
   exec {crun} "$@"' crun-hybrid "$@"
"""
# Rootless, crun runs inside one long-lived user+mount namespace, as rootless podman runs it
# inside its pause process's namespaces: crun cannot create the mount namespace itself.
CRUN_ROOTLESS = """#!/bin/sh
exec /usr/bin/nsenter --preserve-credentials --user --mount --target {pid} {crun} "$@"
"""


class SetupError(Exception):
    """A set-up step failed; the message names the step."""


@dataclass
class User:
    """The account the rootless benchmark runs as."""

    name: str
    uid: int
    gid: int
    home: str


def check(argv: list[str], **kwargs: object) -> str:
    """Run argv, return its stdout; raise SetupError with the first stderr line on failure."""
    proc = subprocess.run(argv, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        first = lines[0] if lines else f"exit status {proc.returncode}"
        raise SetupError(f"{' '.join(argv[:3])}: {first}")
    return str(proc.stdout)


def ensure_user(name: str = TEST_USER) -> User:
    """Return the test user, creating it with useradd -m (and subuid ranges) when missing."""
    import pwd

    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        check(["useradd", "-m", "-s", "/bin/sh", name])
        pw = pwd.getpwnam(name)
    return User(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


def drop_privileges(user: User) -> None:
    """Become user for good (all of uid, gid and groups), staying a subreaper."""
    import ctypes

    os.setgroups([])
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)
    # setuid clears the dumpable flag, which makes our own /proc entries root-owned
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE


def build_rootfs(dest: str) -> None:
    """Build a busybox-static rootfs in dest (as in shared/ENGINES.md section 1)."""
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "root", "var", "run", "usr"):
        os.makedirs(os.path.join(dest, d), exist_ok=True)
    bb = os.path.join(dest, "bin", "busybox")
    shutil.copy2(BUSYBOX, bb)
    for applet in check([bb, "--list"]).split():
        if applet != "busybox":
            os.symlink("busybox", os.path.join(dest, "bin", applet))
    os.symlink("bin", os.path.join(dest, "sbin"))
    os.symlink("../bin", os.path.join(dest, "usr", "bin"))
    os.symlink("../bin", os.path.join(dest, "usr", "sbin"))
    with open(os.path.join(dest, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
    with open(os.path.join(dest, "etc", "group"), "w") as f:
        f.write("root:x:0:\nnobody:x:65534:\n")
    os.chmod(os.path.join(dest, "tmp"), 0o1777)


def rootfs_tar(rootfs: str, dest: str) -> None:
    """Pack rootfs into an uncompressed tar owned by 0:0, for ``podman import``."""

    def owner0(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(dest, "w") as tar:
        tar.add(rootfs, arcname=".", filter=owner0)


def runtime_spec(spec_argv: list[str], workdir: str, rootless: bool) -> dict:
    """The default config.json that ``RUNTIME spec [--rootless]`` writes, parsed."""
    os.makedirs(workdir, exist_ok=True)
    check([*spec_argv, "spec", *(["--rootless"] if rootless else [])], cwd=workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        return dict(json.load(f))


def write_bundle(config: dict, rootfs: str, args: list[str], dest: str, drop_userns: bool = False,
                 annotations: dict[str, str] | None = None) -> str:
    """Write dest/config.json from config with the given args (and annotations), no terminal, root=rootfs."""
    cfg = json.loads(json.dumps(config))
    if annotations:
        cfg["annotations"] = annotations
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = args
    cfg["root"]["path"] = os.path.abspath(rootfs)
    if drop_userns:
        linux = cfg.get("linux", {})
        linux["namespaces"] = [ns for ns in linux.get("namespaces", []) if ns.get("type") != "user"]
        linux.pop("uidMappings", None)
        linux.pop("gidMappings", None)
    os.makedirs(dest, exist_ok=True)
    with open(os.path.join(dest, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    return dest


def write_script(path: str, text: str) -> str:
    """Write an executable script at path."""
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path


def crun_hybrid_wrapper(bindir: str, crun: str) -> str:
    """Write the crun-hybrid wrapper (private mount namespace without cgroup2) and return its path."""
    return write_script(os.path.join(bindir, "crun-hybrid"), CRUN_HYBRID.format(crun=crun))


def start_ns_holder() -> subprocess.Popen[str]:
    """Start a process holding a user+mount namespace with cgroup2 hidden, for rootless crun."""
    proc = subprocess.Popen(
        [
            "/usr/bin/unshare", "--user", "--map-root-user", "--mount", "/bin/sh", "-c",
            "mount -t tmpfs -o ro none /sys/fs/cgroup/unified && echo ready && exec sleep 2147483647",
        ],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    if proc.stdout.readline().strip() != "ready":
        proc.wait()
        raise SetupError(f"failed to set up a user namespace for crun: {proc.stderr.read().strip()}")
    return proc


def crun_rootless_wrapper(bindir: str, crun: str, holder_pid: int) -> str:
    """Write the wrapper that runs crun inside the holder's namespaces and return its path."""
    return write_script(os.path.join(bindir, "crun-userns"), CRUN_ROOTLESS.format(crun=crun, pid=holder_pid))


def runtime_version(argv: list[str]) -> str:
    """First line of ``RUNTIME --version``, or the error."""
    try:
        out = check([*argv, "--version"], timeout=30)
    except (SetupError, OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    return out.splitlines()[0] if out else ""


def interpreter_of(script: str) -> str | None:
    """The interpreter named by script's #! line, if it is a script."""
    try:
        with open(script, "rb") as f:
            first = f.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    parts = first[2:].decode(errors="replace").split()
    return parts[0] if parts else None


@dataclass
class Podman:
    """An isolated podman configuration (its own storage and config, nothing in /etc)."""

    path: str
    env: dict[str, str]
    image: str
    base: str


def podman_setup(podman: str, base: str, rootfs: str, env: dict[str, str], rootless: bool) -> Podman:
    """Configure podman under base with overlay storage and import the busybox image."""
    os.makedirs(base, exist_ok=True)
    conf = os.path.join(base, "containers.conf")
    storage = os.path.join(base, "storage.conf")
    with open(conf, "w") as f:
        f.write(
            "[containers]\n"
            'cgroupns = "private"\n'
            # this VM lacks CAP_SYS_RESOURCE: podman's default rlimits fail with EPERM
            'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{base}/events.log"\n'
            f'tmp_dir = "{base}/libpod-tmp"\n'
            f'static_dir = "{base}/storage/libpod"\n'
            f'volume_path = "{base}/storage/volumes"\n'
        )
    with open(storage, "w") as f:
        f.write(
            '[storage]\ndriver = "overlay"\n'
            f'runroot = "{base}/run"\ngraphroot = "{base}/storage"\n'
            f'rootless_storage_path = "{base}/storage"\n'
        )
    penv = dict(env, CONTAINERS_CONF=conf, CONTAINERS_STORAGE_CONF=storage)
    if rootless:
        # podman's runroot is always $XDG_RUNTIME_DIR/containers: give it its own
        xdg = os.path.join(base, "xdg")
        os.makedirs(xdg, mode=0o700, exist_ok=True)
        penv["XDG_RUNTIME_DIR"] = xdg
    tar = os.path.join(base, "bb-rootfs.tar")
    rootfs_tar(rootfs, tar)
    image = "localhost/pyouki-bench-bb:latest"
    check(
        [podman, "import", "--change", 'CMD ["/bin/sh"]', "--change", "ENV PATH=/bin", tar, image],
        env=penv, cwd=base, timeout=120,
    )  # fmt: skip
    return Podman(podman, penv, image, base)


def podman_teardown(pm: Podman, rootless: bool) -> None:
    """Remove podman's containers and storage, stop its pause process, unmount what it left."""
    subprocess.run([pm.path, "rm", "-af"], env=pm.env, capture_output=True, timeout=60, cwd=pm.base)
    subprocess.run([pm.path, "system", "reset", "-f"], env=pm.env, capture_output=True, timeout=120, cwd=pm.base)
    if rootless:
        pidfile = os.path.join(pm.env["XDG_RUNTIME_DIR"], "libpod", "tmp", "pause.pid")
        try:
            with open(pidfile) as f:
                os.kill(int(f.read().strip()), 9)
        except (OSError, ValueError):
            pass
    unmount_under(pm.base)


def unmount_under(base: str) -> None:
    """Lazily unmount every mount point at or below base (deepest first); root only."""
    if os.geteuid() != 0:
        return
    prefix = os.path.realpath(base)
    points: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == prefix or mp.startswith(prefix + "/"):
                points.append(mp)
    for mp in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True)
