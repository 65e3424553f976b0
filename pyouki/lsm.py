"""Security labels: `process.apparmorProfile`, `process.selinuxLabel` and `linux.mountLabel`.

Applied as runc applies them. `check` runs in the caller, before anything is created, and refuses
a label this host cannot apply (its LSM is not enabled) with the field's JSON path; `apply` runs
in the container's process right before execve and asks the kernel to put the *next* exec under
the profile and label (libapparmor's aa_change_onexec, libselinux's setexeccon), so the runtime's
own code never runs confined and the transition happens at execve. `mount_data` and
`set_file_label` carry the SELinux mount label onto the container's own filesystems (see
pyouki.mounts).

The literal AppArmor profile ``unconfined`` is accepted everywhere: where AppArmor is enabled it
is written like any profile; where it is not, every process already is unconfined.
"""

from __future__ import annotations

import os

from pyouki import syscalls as sc
from pyouki.errors import ConfigError, PyoukiError, reason

UNCONFINED = "unconfined"
PROC_SUPER_MAGIC = 0x9FA0
SELINUX_XATTR = "security.selinux"
# read in the caller (the host's /sys) by check(), before the fork; init and the exec child
# inherit the answer, so it never depends on the container's own /sys
_apparmor_enabled: bool | None = None


def apparmor_enabled() -> bool:
    """Whether the kernel enforces AppArmor (its module parameter reads Y, as runc checks)."""
    global _apparmor_enabled
    if _apparmor_enabled is None:
        try:
            with open("/sys/module/apparmor/parameters/enabled", "rb") as f:
                _apparmor_enabled = f.read(1) == b"Y"
        except OSError:
            _apparmor_enabled = False
    return _apparmor_enabled


def selinux_enabled() -> bool:
    """Whether SELinux is on, as go-selinux decides: selinuxfs is mounted and we have a label."""
    try:
        with open("/proc/self/mounts") as f:
            if not any(line.split()[2:3] == ["selinuxfs"] for line in f):
                return False
        with open("/proc/self/attr/current", "rb") as f:
            current = f.read().rstrip(b"\0\n")
    except OSError:
        return False
    return current not in (b"", b"kernel")


def _string(obj: dict, key: str, field: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"{field}.{key}", "must be a string")
    # one line, no quote: it is written to /proc as one record and quoted inside mount options
    if any(c in value for c in '\0\n"'):
        raise ConfigError(f"{field}.{key}", f"{value!r} is not a valid label")
    return value


def check(process: dict, linux: dict | None = None) -> None:
    """Refuse, before anything is created, a label that needs an LSM this host does not run.

    runc fails on these too (its validator for SELinux, the write of the profile or the mount
    for the others); here the error names the field.
    """
    profile = _string(process, "apparmorProfile", "process")
    if profile and not apparmor_enabled() and profile != UNCONFINED:
        raise ConfigError("process.apparmorProfile",
                          f"cannot apply profile {profile!r}: apparmor is not enabled on this host")
    if _string(process, "selinuxLabel", "process") and not selinux_enabled():
        raise ConfigError("process.selinuxLabel", "selinux is disabled or not supported on this host")
    if _string(linux or {}, "mountLabel", "linux") and not selinux_enabled():
        raise ConfigError("linux.mountLabel", "selinux is disabled or not supported on this host")


def inherit(process: dict, config: dict) -> dict:
    """The process of `exec`, with the container's profile and label where it names none (runc)."""
    base = config.get("process") or {}
    missing = {k: base[k] for k in ("apparmorProfile", "selinuxLabel") if base.get(k) and not process.get(k)}
    return {**process, **missing} if missing else process


def apply(process: dict) -> None:
    """Right before execve: the next exec enters process.apparmorProfile and process.selinuxLabel.

    Runs in the container (after pivot_root): the attribute is opened through the container's
    /proc and must be on procfs, so a planted file can never swallow the request.
    """
    profile = process.get("apparmorProfile")
    if profile and (profile != UNCONFINED or apparmor_enabled()):
        _write_attr("apparmor", f"exec {profile}", "process.apparmorProfile", f"failed to apply profile {profile!r}")
    label = process.get("selinuxLabel")
    if label:
        _write_attr("selinux", label, "process.selinuxLabel", f"failed to set the exec label {label!r}")


def _write_attr(lsm: str, value: str, field: str, what: str) -> None:
    # the LSM's own directory (Linux 5.8+, needed with stacked LSMs), else the shared file
    base = "/proc/thread-self/attr/"
    path = f"{base}{lsm}/exec" if os.path.exists(f"{base}{lsm}/exec") else f"{base}exec"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise PyoukiError(f"{field}: {what}: open {path}: {reason(e)}") from None
    try:
        if sc.fstatfs_type(fd) != PROC_SUPER_MAGIC:
            raise PyoukiError(f"{field}: {what}: {path} is not on procfs")
        os.write(fd, value.encode())
    except OSError as e:
        hint = " (is the profile loaded?)" if lsm == "apparmor" and e.errno == 2 else ""
        raise PyoukiError(f"{field}: {what}: write {path}: {reason(e)}{hint}") from None
    finally:
        os.close(fd)


def mount_data(data: str, label: str) -> str:
    """The mount data with the SELinux context option for label (go-selinux FormatMountLabel)."""
    if not label:
        return data
    option = f'context="{label}"'  # quoted: an MCS label holds commas (s0:c1,c2)
    return f"{data},{option}" if data else option


def set_file_label(path: str, label: str) -> None:
    """Label the file at path (the root of an mqueue mount, which runc labels this way)."""
    if label:
        os.setxattr(path, SELINUX_XATTR, label.encode())

