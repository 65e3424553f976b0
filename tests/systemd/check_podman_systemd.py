"""Rootless podman with ``cgroup_manager = "systemd"`` inside the nspawn tier (no pytest here).

``tests/test_podman_systemd.py`` boots the cached rootfs with the host's podman, conmon,
catatonit and runc bound in (the rootfs itself has no podman: see that test's docstring) and
runs this script twice:

- ``setup`` as root: podman's system-wide files the rootfs lacks (``policy.json``) and a
  ``pyouki`` command running /src's tree; writes go to the volatile overlay;
- ``run`` as the test user logged in through PAM (a user manager on the user bus, as on a
  laptop): the podman configuration in ``~/.config/containers`` (systemd cgroup manager, vfs
  storage, no network), the busybox image, then the same scenarios with runc and with pyouki.

Prints one JSON line: per runtime, per scenario, what podman answered and what was observed
in the user manager and the cgroup tree. The test compares the runtimes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

BUSYBOX = "/opt/busybox"
IMAGE = "localhost/bb:latest"
RUNTIMES = {"runc": "/usr/sbin/runc", "pyouki": "/usr/local/bin/pyouki"}
SLEEPER = "while :; do sleep 0.1; done"
USER_SERVICE = "/user.slice/user-1000.slice/user@1000.service"


def setup() -> None:
    """As root: what podman reads from /etc, and the pyouki command."""
    etc = Path("/etc/containers")
    etc.mkdir(exist_ok=True)
    (etc / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
    (etc / "registries.conf").write_text("unqualified-search-registries = []\n")
    launcher = Path(RUNTIMES["pyouki"])
    launcher.write_text("#!/bin/sh\nPYTHONPATH=/src PYTHONDONTWRITEBYTECODE=1 exec python3 -c "
                        "'import sys; from pyouki.cli.main import main; sys.exit(main())' \"$@\"\n")
    launcher.chmod(0o755)


def configure(home: Path) -> None:
    """The user's podman configuration: systemd cgroup manager (podman's default here, made explicit)."""
    conf = home / ".config/containers"
    conf.mkdir(parents=True, exist_ok=True)
    runtimes = "\n".join(f'{n} = ["{p}"]' for n, p in RUNTIMES.items())
    (conf / "containers.conf").write_text(
        # no pids limit by default: the host's controllers stay on cgroup v1, so nspawn's v2 tree
        # has no pids controller and both runtimes refuse podman's default one (runc writing
        # pids.max, pyouki before TasksMax= that systemd would not enforce); the "run_pids_limit"
        # scenario asks for one explicitly
        '[containers]\nnetns = "none"\npids_limit = 0\n'
        '[engine]\ncgroup_manager = "systemd"\nevents_logger = "file"\n'
        'runtime = "runc"\n'
        'runtime_supports_json = ["crun", "runc", "pyouki"]\n'
        f"[engine.runtimes]\n{runtimes}\n")
    (conf / "storage.conf").write_text('[storage]\ndriver = "vfs"\n')


def podman(rt: str | None, *args: str, timeout: float = 90) -> dict[str, Any]:
    """``podman [--runtime RT] ARGS``: rc, stdout, stderr (a timeout is rc -1)."""
    argv = ["podman", *(["--runtime", rt] if rt else []), *args]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        return {"rc": -1, "stdout": str(e.stdout or ""), "stderr": f"timed out after {timeout:.0f} s"}
    return {"rc": res.returncode, "stdout": res.stdout.strip(), "stderr": res.stderr.strip()}


def import_image(tmp: Path) -> None:
    """The busybox rootfs (applet links to /opt/busybox's copy) imported as IMAGE."""
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    tar_path = tmp / "bb.tar"
    with tarfile.open(tar_path, "w") as tar:
        for d in ("bin", "tmp", "proc", "sys", "dev", "etc"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox", filter=_root)
        for a in applets:
            if a != "busybox":
                info = tarfile.TarInfo(f"bin/{a}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(info)
    res = podman(None, "import", "--change", 'CMD ["/bin/sh"]', "--change", "ENV PATH=/bin", str(tar_path), IMAGE)
    if res["rc"] != 0:
        raise SystemExit(f"podman import failed: {res['stderr']}")


def _root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def proc_cgroup(pid: int) -> str:
    """The v2 line of /proc/PID/cgroup ("" if gone)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return ""
    return next((line[3:] for line in lines if line.startswith("0::")), "")


def scopes() -> list[str]:
    """The user manager's libpod units (containers' scopes and conmon's)."""
    res = subprocess.run(["systemctl", "--user", "list-units", "--all", "--plain", "--no-legend", "libpod*"],
                         capture_output=True, text=True, timeout=30)
    return sorted(line.split()[0] for line in res.stdout.splitlines() if line.strip())


def unit_property(unit: str, prop: str) -> str:
    """A property of a unit of the user manager, as ``systemctl --user show`` prints it."""
    res = subprocess.run(["systemctl", "--user", "show", "--value", "-p", prop, unit],
                         capture_output=True, text=True, timeout=30)
    return res.stdout.strip()


def inspect(rt: str, name: str, fmt: str) -> str:
    """``podman inspect -f FMT NAME`` ("" when it fails)."""
    res = podman(rt, "inspect", "-f", fmt, name)
    return str(res["stdout"]) if res["rc"] == 0 else ""


def wait_status(rt: str, name: str, want: str, timeout: float = 20) -> str:
    """Poll the container's status until it is ``want`` (or time runs out); return the last one."""
    deadline = time.monotonic() + timeout
    status = inspect(rt, name, "{{.State.Status}}")
    while status != want and time.monotonic() < deadline:
        time.sleep(0.1)
        status = inspect(rt, name, "{{.State.Status}}")
    return status


def scenarios(rt: str) -> dict[str, Any]:
    """Every scenario with runtime rt; each records podman's answers, never raises on a failure."""
    f: dict[str, Any] = {}
    f["run_fg"] = podman(rt, "run", "--rm", IMAGE, "echo", "hello")
    f["run_pids_limit"] = podman(rt, "run", "--rm", "--pids-limit", "2048", IMAGE, "echo", "limited")
    f["run_exit_code"] = podman(rt, "run", "--rm", IMAGE, "sh", "-c", "exit 7")["rc"]
    name = f"pms-{rt}"
    f["run_d"] = podman(rt, "run", "-d", "--name", name, IMAGE, "sh", "-c", SLEEPER)
    cid = str(f["run_d"]["stdout"])
    pid = int(inspect(rt, name, "{{.State.Pid}}") or 0)
    f["cgroup_manager"] = inspect(rt, name, "{{.HostConfig.CgroupManager}}")
    f["init_cgroup"] = proc_cgroup(pid) if pid else ""
    f["scope_expected"] = f"{USER_SERVICE}/user.slice/libpod-{cid}.scope"
    f["scopes_running"] = scopes()
    f["exec"] = podman(rt, "exec", name, "sh", "-c", "echo in-$((6*7))")
    f["exec_missing"] = podman(rt, "exec", name, "nosuchcmd")["rc"]
    f["exec_d"] = podman(rt, "exec", "-d", name, "sleep", "300")
    f["top"] = podman(rt, "top", name, "pid", "args")
    f["ps"] = podman(rt, "ps", "--filter", f"name={name}", "--format", "{{.Names}} {{.Status}}")
    f["stats"] = podman(rt, "stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}}", name)
    f["update"] = podman(rt, "update", "--cpus", "0.5", name)
    f["cpu_quota"] = unit_property(f"libpod-{cid}.scope", "CPUQuotaPerSecUSec")
    f["pause"] = podman(rt, "pause", name)
    f["paused"] = inspect(rt, name, "{{.State.Status}}")
    f["frozen"] = _read(f"/sys/fs/cgroup{f['scope_expected']}/cgroup.freeze")
    f["unpause"] = podman(rt, "unpause", name)
    f["unpaused"] = inspect(rt, name, "{{.State.Status}}")
    f["exec_after_unpause"] = podman(rt, "exec", name, "echo", "again")
    # a paused container killed with SIGKILL must die (runc thaws after signalling)
    f["pause_again"] = podman(rt, "pause", name)
    f["kill_paused"] = podman(rt, "kill", name, timeout=60)
    f["after_kill"] = wait_status(rt, name, "exited")
    f["rm"] = podman(rt, "rm", "-f", "-t", "0", name)
    f["after_rm"] = podman(rt, "inspect", name)["rc"]
    deadline = time.monotonic() + 10
    while any(cid in s for s in scopes()) and time.monotonic() < deadline:
        time.sleep(0.1)
    f["scopes_left"] = [s for s in scopes() if cid and cid in s]
    f["cgroup_left"] = os.path.exists(f"/sys/fs/cgroup{f['scope_expected']}")
    f["init_alive"] = bool(pid) and os.path.exists(f"/proc/{pid}")
    return f


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as e:
        return f"error: {e.strerror}"


def main(argv: list[str]) -> int:
    """``setup`` (root) or ``run`` (the logged-in test user)."""
    if argv[:1] == ["setup"]:
        setup()
        return 0
    home = Path(os.environ["HOME"])
    configure(home)
    out: dict[str, Any] = {"info": podman(None, "info", "--format",
                                          "{{.Host.CgroupManager}} {{.Host.CgroupsVersion}}")}
    with tempfile.TemporaryDirectory(prefix="pms-") as tmp:
        import_image(Path(tmp))
    for rt in RUNTIMES:
        out[rt] = scenarios(rt)
    podman(None, "rm", "-af", "-t", "0")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
