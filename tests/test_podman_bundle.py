"""A bundle captured from rootful podman runs as root, and its security settings take effect.

The config is ``tests/fixtures/clients/podman-rootful-config.json`` (or ``PYOUKI_PODMAN_CONFIG``)
with its rootfs, bind-mount sources, network namespace and cgroup path replaced by test ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Bundle, Runner, mounts_under

# captured from podman by the team (shared/clients), carried in the repo as a fixture
PODMAN_CONFIG = Path(os.environ.get("PYOUKI_PODMAN_CONFIG",
                                    Path(__file__).parent / "fixtures/clients/podman-rootful-config.json"))
CAPS = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5,
    "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_RAW": 13, "CAP_SYS_CHROOT": 18, "CAP_SYS_ADMIN": 21, "CAP_SYS_TIME": 25,
    "CAP_MKNOD": 27, "CAP_AUDIT_WRITE": 29, "CAP_SETFCAP": 31,
}
V1_HIERARCHIES = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd")

pytestmark = pytest.mark.parametrize("mode", ["root"])


@pytest.fixture
def netns() -> Iterator[str]:
    """A named network namespace standing in for podman's netavark one."""
    name = f"pyouki-lc-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield f"/run/netns/{name}"
    subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def cgroup_path() -> Iterator[str]:
    """A unique cgroupsPath; whatever the runtime leaves there is removed (and reported)."""
    path = f"/pyouki-lc-{uuid.uuid4().hex[:8]}"
    yield path
    for h in V1_HIERARCHIES:
        d = Path("/sys/fs/cgroup") / h / path.lstrip("/")
        if d.exists():
            d.rmdir()


def podman_bundle(runner: Runner, make_bundle: Callable[..., Bundle], netns: str, cgroup_path: str) -> Bundle:
    """The captured podman config pointed at test paths."""
    b = make_bundle("podman")
    cfg: dict[str, Any] = json.loads(PODMAN_CONFIG.read_text())
    cfg["root"] = {"path": str(b.rootfs)}
    cfg["process"]["terminal"] = False
    cfg["process"]["env"] = cfg["process"]["env"] + b.config["process"]["env"][-1:]  # leftover marker
    cfg["linux"]["cgroupsPath"] = cgroup_path
    for ns in cfg["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = netns
    userdata = runner.workdir / "userdata"
    userdata.mkdir()
    (userdata / "shm").mkdir()
    files = {"hostname": "podman-host\n", "resolv.conf": "nameserver 192.0.2.1\n",
             "hosts": "127.0.0.1 localhost\n", ".containerenv": "engine=\"podman-4.3.1\"\n"}
    for name, text in files.items():
        (userdata / name).write_text(text)
    for m in cfg["mounts"]:
        if m["type"] == "bind":
            m["source"] = str(userdata / os.path.basename(m["source"]))
    b.config = cfg
    b.write()
    return b


def mask(names: list[str]) -> int:
    """Capability bitmask of ``names``."""
    return sum(1 << CAPS[n] for n in names)


PROBE = r"""
grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):' /proc/self/status
echo "nofile=$(ulimit -n)/$(ulimit -Hn) nproc=$(ulimit -u)/$(ulimit -Hu)"
echo "umask=$(umask)"
echo "kcore=$(head -c 16 /proc/kcore | wc -c)"
echo "firmware=$(ls -A /sys/firmware | wc -l)"
echo 1 > /proc/sysrq-trigger 2>/dev/null && echo sysrq=writable || echo sysrq=refused
touch /proc/sys/kernel/hostname 2>/dev/null; echo x > /proc/sys/kernel/hostname 2>/dev/null \
  && echo procsys=writable || echo procsys=refused
echo "hostname=$(hostname)"
echo "etchostname=$(cat /etc/hostname)"
echo "containerenv=$(cat /run/.containerenv)"
hostname changed-by-probe 2>/dev/null && echo sethostname=allowed || echo sethostname=refused
grep -q ' /sys/fs/cgroup ' /proc/mounts && echo cgroupfs=mounted
"""


def parse_probe(out: str) -> dict[str, str]:
    """``key: value`` and ``key=value`` lines into a dict."""
    found: dict[str, str] = {}
    for line in out.splitlines():
        if ":" in line and "=" not in line.split(":", 1)[0]:
            k, _, v = line.partition(":")
            found[k.strip()] = v.strip()
        elif "=" in line:
            for part in line.split():
                k, _, v = part.partition("=")
                found[k] = v
    return found


def test_podman_bundle_security_settings(
    runner: Runner, make_bundle: Callable[..., Bundle], netns: str, cgroup_path: str
) -> None:
    b = podman_bundle(runner, make_bundle, netns, cgroup_path)
    caps = b.process["capabilities"]
    # CAP_SYS_ADMIN makes sethostname a pure seccomp question: the profile refuses it with EPERM
    for key in ("bounding", "effective", "permitted"):
        caps[key] = caps[key] + ["CAP_SYS_ADMIN"]
    b.sh(PROBE)
    cid = runner.new_id("podman")
    r = runner.run(cid, b).ok()
    got = parse_probe(r.stdout)

    want_caps = mask(caps["bounding"])
    assert int(got["CapBnd"], 16) == want_caps
    assert int(got["CapEff"], 16) == want_caps
    assert int(got["CapPrm"], 16) == want_caps
    assert int(got["CapInh"], 16) == 0
    assert int(got["CapAmb"], 16) == 0
    assert got["Seccomp"] == "2", "seccomp filter mode"
    assert got["sethostname"] == "refused", "the profile's EPERM rule for sethostname"
    assert got["hostname"] == b.config["hostname"]

    rl = {r_["type"]: r_ for r_ in b.process["rlimits"]}
    assert got["nofile"] == f"{rl['RLIMIT_NOFILE']['soft']}/{rl['RLIMIT_NOFILE']['hard']}"
    assert got["nproc"] == f"{rl['RLIMIT_NPROC']['soft']}/{rl['RLIMIT_NPROC']['hard']}"
    assert got["umask"] == "0022"

    assert got["kcore"] == "0", "/proc/kcore is masked"
    assert got["firmware"] == "0", "/sys/firmware is masked"
    assert got["sysrq"] == "refused", "/proc/sysrq-trigger is read-only"
    assert got["procsys"] == "refused", "/proc/sys is read-only"
    assert got["etchostname"] == "podman-host"
    assert got["containerenv"] == 'engine="podman-4.3.1"'
    assert got.get("cgroupfs") == "mounted"

    assert runner.state_entries() == []
    assert mounts_under([runner.workdir]) == []


def test_podman_bundle_seccomp_without_sys_admin(
    runner: Runner, make_bundle: Callable[..., Bundle], netns: str, cgroup_path: str
) -> None:
    # Unmodified security settings: the process runs, filtered, with exactly podman's caps.
    b = podman_bundle(runner, make_bundle, netns, cgroup_path)
    b.sh("grep -E '^(CapEff|Seccomp|NoNewPrivs):' /proc/self/status; mkdir /tmp/d && echo mkdir-ok")
    got = parse_probe(runner.run(runner.new_id("podman"), b).ok().stdout)
    assert int(got["CapEff"], 16) == mask(b.process["capabilities"]["effective"])
    assert got["Seccomp"] == "2"
    assert got["NoNewPrivs"] == ("1" if b.process.get("noNewPrivileges") else "0")
    assert (b.rootfs / "tmp" / "d").is_dir(), "mkdir is allowed by the profile"


def test_podman_bundle_lifecycle(
    runner: Runner, make_bundle: Callable[..., Bundle], netns: str, cgroup_path: str
) -> None:
    # podman's own sequence: create (with --log json), start, kill, delete
    b = podman_bundle(runner, make_bundle, netns, cgroup_path)
    cid = runner.new_id("podman")
    log = runner.rundir / "oci-log"
    runner.cmd("--log", str(log), "--log-format", "json", "create", "--bundle", str(b.path),
               "--pid-file", str(runner.rundir / "pidfile"), cid).ok()
    pid = int((runner.rundir / "pidfile").read_text())
    runner.cmd("--log", str(log), "--log-format", "json", "start", cid).ok()
    assert runner.status(cid) == "running"
    runner.kill(cid, "15").ok()  # "sleep 100" as PID 1 ignores TERM: podman follows with KILL
    runner.kill(cid, "9").ok()
    assert runner.wait_status(cid, "stopped") == "stopped"
    runner.delete(cid).ok()
    assert not os.path.exists(f"/proc/{pid}/status") or runner.status(cid) is None
    for h in V1_HIERARCHIES:
        assert not (Path("/sys/fs/cgroup") / h / cgroup_path.lstrip("/")).exists(), f"cgroup left in {h}"
