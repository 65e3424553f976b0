"""`spec`: a starting config.json, the same as runc's, for root or (`--rootless`) for the caller."""

from __future__ import annotations

import os

from pyouki import OCI_VERSION
from pyouki.errors import PyoukiError, reason

_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
_MASKED = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
           "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"]
_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def default_spec(rootless: bool = False) -> dict:
    """The example config: `sh` in a busybox-style rootfs, like `runc spec`."""
    spec: dict = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": True,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {k: list(_CAPS) for k in ("bounding", "effective", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "pyouki",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": list(_MASKED),
            "readonlyPaths": list(_READONLY),
        },
    }
    if _cgroup_v2_host():
        # runc adds it only where it isolates something: on cgroup v1 a cgroup namespace would
        # show the host's hierarchies (and their release_agent) at /sys/fs/cgroup
        spec["linux"]["namespaces"].append({"type": "cgroup"})
    if rootless:
        make_rootless(spec, os.geteuid(), os.getegid())
    return spec


def _cgroup_v2_host() -> bool:
    from pyouki.cgroups import detect_mode

    return detect_mode() == "unified"


def make_rootless(spec: dict, uid: int, gid: int) -> None:
    """What runc's `spec --rootless` changes: own ids mapped to 0, no network namespace, /sys bound
    from the host, no gid= on devpts, no device cgroup rules. Unlike runc, no cgroup namespace on
    v2 hosts either: cgroup2 cannot be mounted in it there (EBUSY in the nspawn tier)."""
    linux = spec["linux"]
    linux["uidMappings"] = [{"containerID": 0, "hostID": uid, "size": 1}]
    linux["gidMappings"] = [{"containerID": 0, "hostID": gid, "size": 1}]
    linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] not in ("network", "cgroup")]
    linux["namespaces"].append({"type": "user"})
    linux.pop("resources", None)
    mounts = []
    for m in spec["mounts"]:
        if m["destination"] == "/sys":
            m = {"destination": "/sys", "type": "none", "source": "/sys",
                 "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}
        elif m["type"] == "devpts":
            m = dict(m, options=[o for o in m["options"] if not o.startswith("gid=")])
        mounts.append(m)
    spec["mounts"] = mounts


def write_spec(bundle: str, rootless: bool) -> str:
    """Write config.json into bundle; refuse to overwrite one, like runc."""
    import json

    path = os.path.join(bundle or ".", "config.json")
    if os.path.exists(path):
        raise PyoukiError(f"file {path} exists: remove it first")
    try:
        with open(path, "x") as f:
            json.dump(default_spec(rootless), f, indent="\t")
    except OSError as e:
        raise PyoukiError(f"failed to write {path}: {reason(e)}") from None
    return path
