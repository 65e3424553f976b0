"""Building the container's filesystem view, in the order the kernel requires.

prepare (propagation, rootfs bind) -> mounts -> devices -> pivot_root -> (sysctl etc. by the
caller) -> finalize (masked and read-only paths, read-only root).
"""

from __future__ import annotations

import errno
import os
import stat

from pyouki import syscalls as sc
from pyouki.errors import PyoukiError
from pyouki.mounts import (
    PROPAGATION,
    CgroupView,
    MountSpec,
    clean_path,
    current_flags,
    is_dev_tmpfs,
    mount_one,
    open_in_root,
    proc_fd,
    reason,
    remount_bind,
    split_parent,
    walk,
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
DEV_LINKS = (
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
)


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


def do_mounts(config: dict, rootfd: int, rootless: bool, cgroups: CgroupView | None = None) -> list[MountSpec]:
    """Mount every config.mounts entry inside the rootfs that rootfd names."""
    label = (config.get("linux") or {}).get("mountLabel") or ""
    specs = [MountSpec(m, f"mounts[{i}]", label) for i, m in enumerate(config.get("mounts") or [])]
    for m in specs:
        mount_one(m, rootfd, rootless, cgroups)
    return specs


def create_devices(config: dict, rootfd: int, specs: list[MountSpec], in_userns: bool) -> None:
    """Default devices, linux.devices and the /dev links, unless /dev is bound from the host.

    Every node, link and unlink is made with the *at() calls on a directory fd opened inside the
    rootfs: a /dev planted as a symlink to the host's can only lead back into the rootfs.
    """
    dev_bound = any(m.destination.rstrip("/") == "/dev" and m.is_bind for m in specs)
    devices = [] if dev_bound else [(p, t, ma, mi, mode, 0, 0, "") for p, t, ma, mi, mode in DEFAULT_DEVICES]
    linux = config.get("linux") or {}
    for i, d in enumerate(linux.get("devices") or []):
        path = clean_path(d["path"])  # "/dev/fuse/" is /dev/fuse, as with runc
        if in_userns and path == "/dev/ptmx":
            continue  # the host's ptmx would be bound; runc skips it, /dev/pts/ptmx serves instead
        devices = [x for x in devices if x[0] != path]
        devices.append((path, d["type"], int(d.get("major", 0)), int(d.get("minor", 0)),
                        int(d.get("fileMode", 0o666)), d.get("uid", 0), d.get("gid", 0),
                        f"linux.devices[{i}]"))
    for path, kind, major, minor, mode, uid, gid, field in devices:
        _create_device(rootfd, path, kind, major, minor, mode, uid, gid, in_userns, field)
    if not dev_bound:
        _dev_links(rootfd, any(clean_path(m.destination) == "/dev/pts" for m in specs))
    for m in specs:
        if is_dev_tmpfs(m) and m.flags & sc.MS_RDONLY:
            # mounted writable so that the devices and /dev/pts could be made in it (runc's order)
            fd = walk(rootfd, "/dev")
            try:
                remount_bind(proc_fd(fd), m.flags | sc.MS_RDONLY)
            except OSError as e:
                raise PyoukiError(f"{m.field}: failed to remount /dev read-only: {reason(e)}") from None
            finally:
                os.close(fd)


def _dev_links(rootfd: int, has_pts: bool) -> None:
    try:
        fd = walk(rootfd, "/dev", "dir")
    except OSError as e:
        raise PyoukiError(f"failed to create /dev in the rootfs: {reason(e)}") from None
    try:
        for target, link in DEV_LINKS:
            _symlink_at(fd, target, os.path.basename(link))
        if has_pts:
            try:
                if not stat.S_ISLNK(os.stat("ptmx", dir_fd=fd, follow_symlinks=False).st_mode):
                    os.unlink("ptmx", dir_fd=fd)
            except FileNotFoundError:
                pass
            _symlink_at(fd, "pts/ptmx", "ptmx")
    except OSError as e:
        raise PyoukiError(f"failed to create the /dev links: {reason(e)}") from None
    finally:
        os.close(fd)


def _symlink_at(dirfd: int, target: str, name: str) -> None:
    try:
        os.symlink(target, name, dir_fd=dirfd)
    except FileExistsError:
        pass  # the image's own (or /dev bound from the host): left as it is


def _create_device(rootfd: int, path: str, kind: str, major: int, minor: int, mode: int,
                   uid: int, gid: int, in_userns: bool, field: str) -> None:
    what = field or path
    try:
        if in_userns:
            # mknod is not allowed in a user namespace: bind the host's node, like runc
            if not os.path.exists(path):
                raise PyoukiError(f"{what}: cannot create device {path} in a user namespace: the host has none to bind")
            fd = walk(rootfd, path, "file")
            try:
                sc.mount(path, proc_fd(fd), None, sc.MS_BIND)
            finally:
                os.close(fd)
            return
        parent, name = split_parent(path)
        fd = walk(rootfd, parent, "dir")
        try:
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                pass
            type_bits = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[kind]
            old = os.umask(0)
            try:
                os.mknod(name, type_bits | (mode & 0o7777), os.makedev(major, minor), dir_fd=fd)
            finally:
                os.umask(old)
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
        finally:
            os.close(fd)
    except OSError as e:
        raise PyoukiError(f"{what}: failed to create device {path}: {reason(e)}") from None


def pivot(rootfd: int, rootfs: str, no_pivot: bool) -> None:
    """Make the rootfs (rootfd) the root: pivot_root, or MS_MOVE + chroot with --no-pivot."""
    try:
        os.fchdir(rootfd)
        if no_pivot:
            _hide_host_proc_sys(rootfs)
            sc.mount(".", "/", None, sc.MS_MOVE)
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


def open_rootfs(rootfs: str) -> int:
    """The rootfs directory as an O_PATH fd, for a container without a mount namespace."""
    try:
        return os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise PyoukiError(f"root.path: failed to open {rootfs}: {reason(e)}") from None


def chroot(rootfd: int, rootfs: str) -> None:
    """Make the rootfs (rootfd) the root without touching the mount table (no mount namespace of
    the container's own: pivot_root or a mount would change the host's), as runc does."""
    try:
        os.fchdir(rootfd)
        os.chroot(".")
        os.chdir("/")
    except OSError as e:
        raise PyoukiError(f"root.path: failed to chroot into {rootfs}: {reason(e)}") from None


def _hide_host_proc_sys(rootfs: str) -> None:
    """Without pivot_root the host's mounts stay in the container's mount namespace, under the
    moved rootfs: detach (or, where that is refused, cover) every full procfs and sysfs of the
    host, as runc does, so they cannot license a fresh unmasked proc or sys mount in the container."""
    with open("/proc/self/mountinfo") as f:
        lines = f.read().splitlines()
    under = rootfs.rstrip("/") + "/"
    for line in lines:
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        mountpoint = fields[4].replace("\\040", " ")
        if fstype not in ("proc", "sysfs") or fields[3] != "/" or (mountpoint + "/").startswith(under):
            continue
        try:
            sc.mount(None, mountpoint, None, sc.MS_SLAVE | sc.MS_REC)  # no unmount event reaches the host
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.EINVAL):
                continue  # under a mount detached already
            raise
        try:
            sc.umount2(mountpoint, sc.MNT_DETACH)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EPERM):
                raise
            sc.mount("tmpfs", mountpoint, "tmpfs", 0)  # locked in a user namespace: cover it


def make_cwd(cwd: str) -> None:
    """Create a missing process.cwd inside the new root, directory by directory on fds: an image
    symlink through /proc/<pid>/root (the host's root without a pid namespace) stays inside."""
    rootfd = _open_root()
    try:
        os.close(walk(rootfd, cwd, "dir"))
    except OSError:
        pass  # reported by the chdir into it, with the field's name
    finally:
        os.close(rootfd)


def set_root_propagation(propagation: str | None) -> None:
    """Apply linux.rootfsPropagation to the new root after the pivot (shared needs it there)."""
    if propagation and propagation in PROPAGATION:
        try:
            sc.mount(None, "/", None, PROPAGATION[propagation])
        except OSError as e:
            raise PyoukiError(f"linux.rootfsPropagation: failed to set {propagation} on /: {reason(e)}") from None


def _open_root() -> int:
    return os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def _null_device(rootfd: int, field: str) -> int:
    """The container's /dev/null, opened inside it and checked to be the null device (an image's
    /dev/null could be a symlink to anything, /proc/1/root/... included)."""
    try:
        fd = open_in_root(rootfd, "/dev/null")
    except OSError as e:
        raise PyoukiError(f"{field}: cannot open /dev/null in the container: {reason(e)}") from None
    st = os.fstat(fd)
    if not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(1, 3):
        os.close(fd)
        raise PyoukiError(f"{field}: /dev/null in the container is not the null device")
    return fd


def mask_paths(paths: list[str]) -> None:
    """linux.maskedPaths: an empty read-only tmpfs over directories, /dev/null over files.

    Runs after pivot_root: each path is opened inside the new root without following magic links
    (without a pid namespace /proc/1/root is the host's root) and masked through its fd."""
    if not paths:
        return
    rootfd = _open_root()
    null = -1
    try:
        for i, path in enumerate(paths):
            field = f"linux.maskedPaths[{i}]"
            try:
                fd = open_in_root(rootfd, path)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise PyoukiError(f"{field}: failed to mask {path}: {reason(e)}") from None
            try:
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    sc.mount("tmpfs", proc_fd(fd), "tmpfs", sc.MS_RDONLY, "size=0k")
                else:
                    if null < 0:
                        null = _null_device(rootfd, field)
                    sc.mount(proc_fd(null), proc_fd(fd), None, sc.MS_BIND)
            except OSError as e:
                raise PyoukiError(f"{field}: failed to mask {path}: {reason(e)}") from None
            finally:
                os.close(fd)
    finally:
        os.close(rootfd)
        if null >= 0:
            os.close(null)


def readonly_paths(paths: list[str]) -> None:
    """linux.readonlyPaths: bind each path onto itself, then remount it read-only (after pivot_root,
    each path opened inside the root without following magic links)."""
    if not paths:
        return
    rootfd = _open_root()
    try:
        for i, path in enumerate(paths):
            try:
                fd = open_in_root(rootfd, path)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise PyoukiError(f"linux.readonlyPaths[{i}]: failed to make {path} read-only: {reason(e)}") from None
            try:
                sc.mount(proc_fd(fd), proc_fd(fd), None, sc.MS_BIND | sc.MS_REC)
                os.close(fd)
                fd = open_in_root(rootfd, path)  # the bind just made
                # ro, keeping the parent mount's nosuid/nodev/noexec like runc (statfs of the bind)
                keep = current_flags(proc_fd(fd)) & (sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
                remount_bind(proc_fd(fd), sc.MS_RDONLY | keep)
            except OSError as e:
                raise PyoukiError(f"linux.readonlyPaths[{i}]: failed to make {path} read-only: {reason(e)}") from None
            finally:
                os.close(fd)
    finally:
        os.close(rootfd)


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


def reopen_dev_null() -> None:
    """Stdio that is the host's /dev/null becomes the container's own, as runc's reOpenDevNull.

    Engines give a detached container the host's /dev/null as stdin (conmon, the shims): a file
    on a mount outside the container's mount namespace, which criu cannot dump ("Can't lookup
    mount"). After the pivot /dev/null is the container's; it replaces only a character device
    with /dev/null's numbers (a planted FIFO or file is left alone).
    """
    try:
        null = os.open("/dev/null", os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return  # none in the container (or not openable): stdio stays as given
    try:
        ours = os.fstat(null)
        if not stat.S_ISCHR(ours.st_mode):
            return
        for fd in (0, 1, 2):
            try:
                st = os.fstat(fd)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == ours.st_rdev:
                os.dup2(null, fd)
    finally:
        os.close(null)
