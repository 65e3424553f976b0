"""Building the container's filesystem view, in the order the kernel requires.

prepare (propagation, rootfs bind) -> mounts -> devices -> pivot_root -> (sysctl etc. by the
caller) -> finalize (masked and read-only paths, read-only root).
"""

from __future__ import annotations

import os
import stat

from pyouki import syscalls as sc
from pyouki.errors import PyoukiError
from pyouki.mounts import (
    PROPAGATION,
    MountSpec,
    make_destination,
    mount_one,
    open_in_root,
    reason,
    remount_bind,
)

DEFAULT_DEVICES = (
    # path, type, major, minor, mode
    ("/dev/null", "c", 1, 3, 0o666),
    ("/dev/zero", "c", 1, 5, 0o666),
    ("/dev/full", "c", 1, 7, 0o666),
    ("/dev/random", "c", 1, 8, 0o666),
    ("/dev/urandom", "c", 1, 9, 0o666),
    ("/dev/tty", "c", 5, 0, 0o666),
)
# what runc always allows in the device cgroup on top of the config's rules
DEFAULT_DEVICE_RULES = tuple(
    {"allow": True, "type": t, "major": ma, "minor": mi, "access": "rwm"}
    for t, ma, mi in (("c", 1, 3), ("c", 1, 5), ("c", 1, 7), ("c", 1, 8), ("c", 1, 9), ("c", 5, 0),
                      ("c", 5, 1), ("c", 5, 2), ("c", 136, -1), ("c", 10, 200))
)
DEV_LINKS = (
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
)


def device_rules(linux: dict) -> list[dict]:
    """linux.resources.devices plus the defaults runc allows and a rule for each linux.devices entry."""
    rules = list(((linux.get("resources") or {}).get("devices")) or [])
    rules += [dict(r) for r in DEFAULT_DEVICE_RULES]
    for d in linux.get("devices") or []:
        if d.get("type") in ("c", "b"):
            rules.append({"allow": True, "type": d["type"], "major": d.get("major", 0), "minor": d.get("minor", 0),
                          "access": "rwm"})
    return rules


def prepare(rootfs: str, propagation: str | None) -> int:
    """Stop mount events from leaking to the host and make the rootfs a mount point; return its fd."""
    flag = PROPAGATION.get(propagation or "rslave", sc.MS_SLAVE | sc.MS_REC)
    # the parent of the new root must never be shared, or pivot_root fails and events leak
    base = flag if not flag & sc.MS_SHARED else sc.MS_SLAVE | sc.MS_REC
    try:
        sc.mount(None, "/", None, base | sc.MS_REC)
        sc.mount(rootfs, rootfs, None, sc.MS_BIND | sc.MS_REC)
    except OSError as e:
        raise PyoukiError(f"failed to prepare rootfs {rootfs}: {reason(e)}") from None
    return os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def do_mounts(config: dict, rootfs: str, rootfd: int, rootless: bool) -> list[MountSpec]:
    """Mount every config.mounts entry inside the rootfs."""
    label = (config.get("linux") or {}).get("mountLabel") or ""
    specs = [MountSpec(m, f"mounts[{i}]", label) for i, m in enumerate(config.get("mounts") or [])]
    for m in specs:
        mount_one(m, rootfs, rootfd, rootless)
    return specs


def create_devices(config: dict, rootfs: str, rootfd: int, specs: list[MountSpec], in_userns: bool) -> None:
    """Default devices, linux.devices and the /dev links, unless /dev is bound from the host."""
    dev_bound = any(m.destination.rstrip("/") == "/dev" and m.is_bind for m in specs)
    devices = [] if dev_bound else [(p, t, ma, mi, mode, 0, 0, "") for p, t, ma, mi, mode in DEFAULT_DEVICES]
    linux = config.get("linux") or {}
    for i, d in enumerate(linux.get("devices") or []):
        devices = [x for x in devices if x[0] != d["path"]]
        devices.append((d["path"], d["type"], int(d.get("major", 0)), int(d.get("minor", 0)),
                        int(d.get("fileMode", 0o666)), d.get("uid", 0), d.get("gid", 0),
                        f"linux.devices[{i}]"))
    for path, kind, major, minor, mode, uid, gid, field in devices:
        _create_device(rootfs, rootfd, path, kind, major, minor, mode, uid, gid, in_userns, field)
    if dev_bound:
        return
    for target, link in DEV_LINKS:
        _symlink(rootfs, target, link)
    if any(m.destination.rstrip("/") == "/dev/pts" for m in specs):
        host = os.path.join(rootfs, "dev/ptmx")
        if os.path.lexists(host) and not os.path.islink(host):
            os.unlink(host)
        _symlink(rootfs, "pts/ptmx", "/dev/ptmx")


def _symlink(rootfs: str, target: str, link: str) -> None:
    path = make_destination(rootfs, os.path.dirname(link), True)
    path = os.path.join(path, os.path.basename(link))
    if not os.path.lexists(path):
        os.symlink(target, path)


def _create_device(rootfs: str, rootfd: int, path: str, kind: str, major: int, minor: int, mode: int,
                   uid: int, gid: int, in_userns: bool, field: str) -> None:
    what = field or path
    try:
        dest = make_destination(rootfs, path, False) if in_userns else None
        if in_userns:
            # mknod is not allowed in a user namespace: bind the host's node, like runc
            assert dest is not None
            if not os.path.exists(path):
                raise PyoukiError(f"{what}: cannot create device {path} in a user namespace: the host has none to bind")
            fd = open_in_root(rootfd, rootfs, dest)
            try:
                sc.mount(path, f"/proc/self/fd/{fd}", None, sc.MS_BIND)
            finally:
                os.close(fd)
            return
        dest = make_destination(rootfs, os.path.dirname(path), True)
        dest = os.path.join(dest, os.path.basename(path))
        if os.path.lexists(dest):
            os.unlink(dest)
        type_bits = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[kind]
        old = os.umask(0)
        try:
            os.mknod(dest, type_bits | (mode & 0o7777), os.makedev(major, minor))
        finally:
            os.umask(old)
        os.chown(dest, uid, gid)
    except OSError as e:
        raise PyoukiError(f"{what}: failed to create device {path}: {reason(e)}") from None


def pivot(rootfs: str, no_pivot: bool) -> None:
    """Make rootfs the root: pivot_root, or MS_MOVE + chroot with --no-pivot."""
    try:
        os.chdir(rootfs)
        if no_pivot:
            sc.mount(rootfs, "/", None, sc.MS_MOVE)
            os.chroot(".")
            os.chdir("/")
            return
        oldroot = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            sc.pivot_root(".", ".")
            # the old root is now stacked under the new one: detach it without leaking events
            os.fchdir(oldroot)
            sc.mount(None, ".", None, sc.MS_SLAVE | sc.MS_REC)
            sc.umount2(".", sc.MNT_DETACH)
        finally:
            os.close(oldroot)
        os.chdir("/")
    except OSError as e:
        raise PyoukiError(f"failed to pivot_root into {rootfs}: {reason(e)}") from None


def set_root_propagation(propagation: str | None) -> None:
    """Apply linux.rootfsPropagation to the new root after the pivot (shared needs it there)."""
    if propagation and propagation in PROPAGATION:
        try:
            sc.mount(None, "/", None, PROPAGATION[propagation])
        except OSError as e:
            raise PyoukiError(f"linux.rootfsPropagation: failed to set {propagation} on /: {reason(e)}") from None


def mask_paths(paths: list[str]) -> None:
    """linux.maskedPaths: an empty read-only tmpfs over directories, /dev/null over files."""
    for i, path in enumerate(paths):
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                sc.mount("tmpfs", path, "tmpfs", sc.MS_RDONLY, "size=0k")
            else:
                sc.mount("/dev/null", path, None, sc.MS_BIND)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise PyoukiError(f"linux.maskedPaths[{i}]: failed to mask {path}: {reason(e)}") from None


def readonly_paths(paths: list[str]) -> None:
    """linux.readonlyPaths: bind each path onto itself, then remount it read-only."""
    for i, path in enumerate(paths):
        try:
            sc.mount(path, path, None, sc.MS_BIND | sc.MS_REC)
            remount_bind(path, sc.MS_RDONLY)  # only ro, like runc (locked flags are kept anyway)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise PyoukiError(f"linux.readonlyPaths[{i}]: failed to make {path} read-only: {reason(e)}") from None


def readonly_root() -> None:
    """root.readonly: remount / read-only."""
    try:
        remount_bind("/", sc.MS_RDONLY)
    except OSError as e:
        raise PyoukiError(f"root.readonly: failed to remount / read-only: {reason(e)}") from None


def write_sysctls(sysctl: dict[str, str]) -> None:
    """linux.sysctl through the container's /proc/sys."""
    for key, value in sysctl.items():
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as e:
            raise PyoukiError(f"linux.sysctl.{key}: failed to write {value!r} to {path}: {reason(e)}") from None
