"""The mounts of `config.mounts`: option parsing (pure) and mounting inside the rootfs.

Every path inside the container is reached through file descriptors obtained inside the rootfs:
`walk` opens it component by component on the parent's fd (symlinks followed as text, clamped at
the root; missing directories made with mkdirat), `open_in_root` lets the kernel resolve it with
openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS). Mounts then go through /proc/self/fd/N and
files are made with the *at() calls, so a symlink planted in the image can never send a mount,
an unlink or a mknod to the host.
"""

from __future__ import annotations

import errno
import os
import stat

from pyouki import bindsources, idmapmount, lsm
from pyouki import syscalls as sc
from pyouki.errors import PyoukiError, reason

# option -> (clear, flag)
FLAGS: dict[str, tuple[bool, int]] = {
    "ro": (False, sc.MS_RDONLY), "rw": (True, sc.MS_RDONLY),
    "nosuid": (False, sc.MS_NOSUID), "suid": (True, sc.MS_NOSUID),
    "nodev": (False, sc.MS_NODEV), "dev": (True, sc.MS_NODEV),
    "noexec": (False, sc.MS_NOEXEC), "exec": (True, sc.MS_NOEXEC),
    "sync": (False, sc.MS_SYNCHRONOUS), "async": (True, sc.MS_SYNCHRONOUS),
    "dirsync": (False, sc.MS_DIRSYNC), "remount": (False, sc.MS_REMOUNT),
    "mand": (False, sc.MS_MANDLOCK), "nomand": (True, sc.MS_MANDLOCK),
    "atime": (True, sc.MS_NOATIME), "noatime": (False, sc.MS_NOATIME),
    "diratime": (True, sc.MS_NODIRATIME), "nodiratime": (False, sc.MS_NODIRATIME),
    "bind": (False, sc.MS_BIND), "rbind": (False, sc.MS_BIND | sc.MS_REC),
    "relatime": (False, sc.MS_RELATIME), "norelatime": (True, sc.MS_RELATIME),
    "strictatime": (False, sc.MS_STRICTATIME), "nostrictatime": (True, sc.MS_STRICTATIME),
    "lazytime": (False, sc.MS_LAZYTIME), "nolazytime": (True, sc.MS_LAZYTIME),
    "silent": (False, sc.MS_SILENT), "loud": (True, sc.MS_SILENT),
    "iversion": (False, sc.MS_I_VERSION), "noiversion": (True, sc.MS_I_VERSION),
    "symfollow": (True, sc.MS_NOSYMFOLLOW), "nosymfollow": (False, sc.MS_NOSYMFOLLOW),
}
PROPAGATION = {
    "private": sc.MS_PRIVATE, "rprivate": sc.MS_PRIVATE | sc.MS_REC,
    "shared": sc.MS_SHARED, "rshared": sc.MS_SHARED | sc.MS_REC,
    "slave": sc.MS_SLAVE, "rslave": sc.MS_SLAVE | sc.MS_REC,
    "unbindable": sc.MS_UNBINDABLE, "runbindable": sc.MS_UNBINDABLE | sc.MS_REC,
}
# recursive attributes applied with mount_setattr(AT_RECURSIVE): option -> (set, clear)
RECURSIVE = {
    "rro": (sc.MOUNT_ATTR_RDONLY, 0), "rrw": (0, sc.MOUNT_ATTR_RDONLY),
    "rnosuid": (sc.MOUNT_ATTR_NOSUID, 0), "rsuid": (0, sc.MOUNT_ATTR_NOSUID),
    "rnodev": (sc.MOUNT_ATTR_NODEV, 0), "rdev": (0, sc.MOUNT_ATTR_NODEV),
    "rnoexec": (sc.MOUNT_ATTR_NOEXEC, 0), "rexec": (0, sc.MOUNT_ATTR_NOEXEC),
    "rnoatime": (sc.MOUNT_ATTR_NOATIME, 0), "rnodiratime": (sc.MOUNT_ATTR_NODIRATIME, 0),
    "rstrictatime": (sc.MOUNT_ATTR_STRICTATIME, 0), "rnosymfollow": (sc.MOUNT_ATTR_NOSYMFOLLOW, 0),
}
# flags that a remount may change on a bind mount; others belong to the superblock
BIND_REMOUNT_MASK = (sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | sc.MS_NOATIME
                     | sc.MS_NODIRATIME | sc.MS_RELATIME | sc.MS_STRICTATIME | sc.MS_NOSYMFOLLOW)
# statvfs f_flag bits (ST_*) for the flags a user namespace cannot clear on a locked mount
_ST_TO_MS = ((1, sc.MS_RDONLY), (2, sc.MS_NOSUID), (4, sc.MS_NODEV), (8, sc.MS_NOEXEC),
             (1024, sc.MS_NOATIME), (2048, sc.MS_NODIRATIME), (4096, sc.MS_RELATIME))


class MountSpec:
    """One entry of config.mounts with its options parsed into flags and data."""

    def __init__(self, entry: dict, field: str, label: str = "") -> None:
        self.field = field
        self.label = label  # linux.mountLabel (SELinux): see _mount_fs
        self.destination: str = entry["destination"]
        self.type: str = entry.get("type") or ""
        self.source: str = entry.get("source") or ""
        self.flags = 0
        self.propagation: list[int] = []
        self.recursive_set = 0
        self.recursive_clear = 0
        data: list[str] = []
        for opt in entry.get("options") or []:
            if opt in FLAGS:
                clear, flag = FLAGS[opt]
                self.flags = self.flags & ~flag if clear else self.flags | flag
            elif opt in PROPAGATION:
                self.propagation.append(PROPAGATION[opt])
            elif opt in RECURSIVE:
                self.recursive_set |= RECURSIVE[opt][0]
                self.recursive_clear |= RECURSIVE[opt][1]
            elif opt in ("idmap", "ridmap"):
                pass  # the mount is prepared idmapped by the runtime (pyouki.idmapmount), see `idmap`
            elif opt == "tmpcopyup":
                pass  # a crun extension; the destination starts empty, as with runc
            else:
                data.append(opt)
        self.data = ",".join(data)
        # idmapped: prepared before the fork by pyouki.idmapmount, moved onto the destination here
        self.idmap = idmapmount.wanted(entry)
        if self.type == "bind":
            self.flags |= sc.MS_BIND

    @property
    def is_bind(self) -> bool:
        return bool(self.flags & sc.MS_BIND)

    def describe(self) -> str:
        return f"{self.type or 'bind'} on {self.destination}"


# how every path inside the container is opened: symlinks stay inside the root, and procfs magic
# links (/proc/<pid>/root of a host process when there is no pid namespace) are refused
RESOLVE_SAFE = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS
_MAX_LINKS = 40


def open_in_root(rootfd: int, path: str, flags: int = os.O_PATH) -> int:
    """Open path (as seen inside the root that rootfd names) with the kernel resolving it there."""
    return sc.openat2(rootfd, path.lstrip("/") or ".", flags, RESOLVE_SAFE)


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def walk(rootfd: int, path: str, create: str = "", mode: int = 0o755) -> int:
    """An O_PATH fd for path inside the root that rootfd names, creating what is missing.

    create is "" (nothing), "dir" (missing directories, the last one included) or "file" (missing
    parent directories and an empty file). Each component is opened on its parent's fd without
    following it; a symlink is read and followed textually inside the root ("/" and ".." stop at
    the root), and directories are made with mkdirat on the parent's fd: no path string ever
    reaches the kernel that it could resolve outside the root. A missing directory followed by
    ".." is made too (the kernel, resolving the same path for the container later, needs it).
    """
    fd, _ = _walk(rootfd, path, create, mode, resolve_only=False)
    return fd


def resolve(rootfd: int, path: str) -> str:
    """The absolute path inside the root that walk(rootfd, path, ...) reaches, with the root's
    symlinks followed as walk follows them and a missing tail kept as given, lexically cleaned
    (runc's SecureJoin, without the root's own path). Nothing is created."""
    _, names = _walk(rootfd, path, "", 0, resolve_only=True)
    return "/" + "/".join(names)


def _walk(rootfd: int, path: str, create: str, mode: int, resolve_only: bool) -> tuple[int, list[str]]:
    """walk()'s loop; names holds the name of each directory in the chain below the root.
    Resolving only, the fd returned is -1 and the names go on with the missing tail."""
    parts = _parts(path)
    chain = [os.dup(rootfd)]  # the fds of the directories walked through, for ".."
    names: list[str] = []
    missing: list[str] = []
    links = 0
    try:
        while parts:
            part = parts.pop(0)
            if missing:  # resolving only, below a missing name: as walk would have made it
                if part == "..":
                    missing.pop()
                else:
                    missing.append(part)
                continue
            if part == "..":
                if len(chain) > 1:
                    os.close(chain.pop())
                    names.pop()
                continue
            parent = chain[-1]
            last = not parts
            try:
                fd = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            except FileNotFoundError:
                if resolve_only:  # kept as text, up to a ".." that leads back to what exists
                    missing.append(part)
                    continue
                if not create:
                    raise
                try:
                    if last and create == "file":
                        os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                         0o644, dir_fd=parent))
                    else:
                        os.mkdir(part, mode, dir_fd=parent)
                except FileExistsError:
                    pass  # made meanwhile (or a dangling symlink, followed below)
                fd = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                os.close(fd)
                links += 1
                if links > _MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                target = os.readlink(part, dir_fd=parent)
                if target.startswith("/"):
                    while len(chain) > 1:
                        os.close(chain.pop())
                    names.clear()
                parts = _parts(target) + parts
                continue
            chain.append(fd)
            names.append(part)
        if resolve_only:
            return -1, names + missing
        return chain.pop(), names
    finally:
        for fd in chain:
            os.close(fd)


def proc_fd(fd: int) -> str:
    """The path through which the kernel reaches fd's file (for mount(2), which takes paths)."""
    return f"/proc/self/fd/{fd}"


def clean_path(path: str) -> str:
    """A container path made absolute and lexically cleaned, like runc's utils.CleanPath."""
    return os.path.normpath("/" + path.lstrip("/"))


def split_parent(path: str) -> tuple[str, str]:
    """(parent, name) of a container path, lexically cleaned like runc's filepath.Join."""
    clean = clean_path(path)
    if clean == "/":
        raise OSError(errno.EINVAL, f"{path} names the root")
    return os.path.dirname(clean), os.path.basename(clean)


def current_flags(path: str) -> int:
    """The MS_* flags of the mount at path (to keep locked ones on a remount in a user namespace)."""
    flags = 0
    st = os.statvfs(path)
    for st_bit, ms in _ST_TO_MS:
        if st.f_flag & st_bit:
            flags |= ms
    return flags


def remount_bind(target: str, flags: int) -> None:
    """Apply flags to a bind mount; inside a user namespace keep the flags the kernel locked."""
    wanted = sc.MS_REMOUNT | sc.MS_BIND | (flags & BIND_REMOUNT_MASK)
    try:
        sc.mount(None, target, None, wanted)
    except PermissionError:
        sc.mount(None, target, None, wanted | current_flags(target))


def _exists(rootfd: int, path: str) -> bool:
    try:
        os.close(open_in_root(rootfd, path))
    except OSError:
        return False
    return True


def mount_one(m: MountSpec, rootfd: int, rootless: bool, cgroups: CgroupView | None = None) -> None:
    """Mount one config.mounts entry inside the root that rootfd names (before pivot_root)."""
    source = m.source
    prepared = bindsources.source_is_dir(m.field) if m.is_bind else None
    if prepared is not None:
        is_dir = prepared  # opened by the runtime before the user namespace (pyouki.bindsources)
    elif m.is_bind:
        if not os.path.isabs(source):
            source = os.path.join(os.getcwd(), source)  # relative to the bundle, our cwd
        try:
            is_dir = os.path.isdir(source)
        except OSError:
            is_dir = True
        if not os.path.exists(source):
            raise PyoukiError(f"{m.field}.source: bind source {source} does not exist")
    else:
        is_dir = True
    if m.type == "cgroup":
        return mount_cgroup(m, rootfd, cgroups or CgroupView([], False))
    if m.type in ("proc", "sysfs"):
        _check_ordinary_dir(m, rootfd)
    # like runc, a tmpfs over an existing directory takes that directory's mode unless mode= is given
    keep_mode = m.type == "tmpfs" and not any(o.startswith("mode=") for o in m.data.split(",")) \
        and _exists(rootfd, m.destination)
    try:
        fd = walk(rootfd, m.destination, "dir" if is_dir else "file")
    except OSError as e:
        raise PyoukiError(
            f"{m.field}.destination: failed to create {m.destination} in the rootfs: {reason(e)}"
        ) from None
    mode = None
    try:
        if m.idmap:
            if not idmapmount.attach(m.field, fd):
                raise PyoukiError(f"{m.field}: the idmapped mount of {source} was not prepared")
            fell_back = False
        elif m.is_bind:
            if not bindsources.attach(m.field, fd):
                sc.mount(source, proc_fd(fd), None, m.flags & (sc.MS_BIND | sc.MS_REC))
            fell_back = False
        else:
            mode = stat.S_IMODE(os.fstat(fd).st_mode) if keep_mode else None
            fell_back = _mount_fs(m, fd)
        # the new mount sits on top of what fd names: open the destination again to reach it
        os.close(fd)
        fd = walk(rootfd, m.destination)
        target = proc_fd(fd)
        if mode is not None:
            os.chmod(target, mode)
        if m.type == "tmpfs" and m.flags & sc.MS_RDONLY and not is_dev_tmpfs(m):
            # mounted writable for the chmod, like runc; /dev waits for its devices (create_devices)
            remount_bind(target, m.flags)
        if m.is_bind and m.flags & ~(sc.MS_BIND | sc.MS_REC):
            remount_bind(target, m.flags)
        elif fell_back:  # the sysfs/mqueue bind of the host's
            remount_bind(target, (m.flags & ~sc.MS_REMOUNT) | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
        for prop in m.propagation:
            sc.mount(None, target, None, prop)
        if m.recursive_set or m.recursive_clear:
            sc.mount_setattr(target, m.recursive_set, m.recursive_clear)
    except OSError as e:
        raise PyoukiError(f"{m.field}: failed to mount {m.describe()}: {reason(e)}") from None
    finally:
        os.close(fd)


def _check_ordinary_dir(m: MountSpec, rootfd: int) -> None:
    """proc and sysfs only on a real directory: never through a symlink the image planted (runc too)."""
    try:
        parent, name = split_parent(m.destination)
        pfd = walk(rootfd, parent)
    except OSError:
        return  # made by walk() later, as directories
    try:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    finally:
        os.close(pfd)
    if not stat.S_ISDIR(st.st_mode):
        raise PyoukiError(f"{m.field}.destination: filesystem {m.type!r} must be mounted on ordinary directory "
                          f"({m.destination} is not one in the rootfs)")


def is_dev_tmpfs(m: MountSpec) -> bool:
    """The /dev filesystem: mounted writable and made read-only once the devices are in it (runc)."""
    return not m.is_bind and clean_path(m.destination) == "/dev"


def _mount_fs(m: MountSpec, fd: int) -> bool:
    """Mount a filesystem on fd's directory; True when it fell back to a bind of the host's."""
    flags = m.flags & ~sc.MS_REMOUNT
    if m.type == "tmpfs" or is_dev_tmpfs(m):
        flags &= ~sc.MS_RDONLY  # made read-only once its contents are in place
    # the mount label as runc puts it: a context= option on the container's own filesystems
    # (tmpfs, devpts...), a file label on mqueue's root, nothing on proc and sysfs (not labelable)
    data = m.data if m.type in ("proc", "sysfs", "mqueue") else lsm.mount_data(m.data, m.label)
    try:
        sc.mount(m.source or m.type, proc_fd(fd), m.type, flags, data or None)
    except PermissionError:
        # in a user namespace sysfs needs a network namespace we own, and mqueue an ipc one:
        # like runc, fall back to a bind mount of the host's
        fallback = {"sysfs": "/sys", "mqueue": "/dev/mqueue"}.get(m.type)
        if not fallback:
            raise
        sc.mount(fallback, proc_fd(fd), None, sc.MS_BIND | sc.MS_REC)
        return True
    if m.type == "mqueue":
        lsm.set_file_label(proc_fd(fd), m.label)  # our own mqueue only, never the host's of the fallback
    return False


class CgroupView:
    """The host's cgroup hierarchies and this container's place in them, read before the cgroup
    namespace is entered (inside it, /proc/self/cgroup says "/" and the place is lost)."""

    def __init__(self, hierarchies: list[tuple[str, str, str, str]], cgroupns: bool) -> None:
        self.hierarchies = hierarchies  # (fstype, mountpoint, own cgroup's host dir, mount options)
        self.cgroupns = cgroupns


def mount_cgroup(m: MountSpec, rootfd: int, view: CgroupView) -> None:
    """The cgroup filesystem as runc mounts it, showing the container's own cgroup only.

    With a cgroup namespace each hierarchy is mounted afresh (the kernel roots it at the
    namespace's cgroup); without one, or where the kernel refuses (a user namespace not owning
    the cgroup namespace), the container's own cgroup directory is bound. Read-only unless the
    config's options say rw.
    """
    fd = -1
    try:
        fd = walk(rootfd, m.destination, "dir")
        sub_flags = (m.flags & ~(sc.MS_BIND | sc.MS_REC | sc.MS_REMOUNT)) | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
        if not any(kind == "cgroup" for kind, *_ in view.hierarchies):
            own = next((d for kind, _, d, _ in view.hierarchies if kind == "cgroup2"), "/sys/fs/cgroup")
            flags = m.flags & ~(sc.MS_BIND | sc.MS_REC | sc.MS_REMOUNT)
            if _mount_hierarchy("cgroup2", "", own, fd, flags, view.cgroupns):
                os.close(fd)
                fd = walk(rootfd, m.destination)  # the bind just made
                remount_bind(proc_fd(fd), flags)
            return
        sc.mount("tmpfs", proc_fd(fd), "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
                 lsm.mount_data("mode=755", m.label))
        os.close(fd)
        fd = walk(rootfd, m.destination)  # the tmpfs just mounted
        for kind, mountpoint, own, options in view.hierarchies:
            name = os.path.basename(mountpoint)
            os.mkdir(name, 0o755, dir_fd=fd)
            sub = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            try:
                bound = _mount_hierarchy(kind, options, own, sub, sub_flags, view.cgroupns)
            finally:
                os.close(sub)
            if bound:
                sub = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
                try:
                    remount_bind(proc_fd(sub), sub_flags)
                finally:
                    os.close(sub)
            if "," in name:  # co-mounted controllers: cpu -> cpu,cpuacct like the host
                for alias in name.split(","):
                    try:
                        os.symlink(name, alias, dir_fd=fd)
                    except FileExistsError:
                        pass
        if m.flags & sc.MS_RDONLY:
            remount_bind(proc_fd(fd), sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    except OSError as e:
        raise PyoukiError(f"{m.field}: failed to mount cgroup on {m.destination}: {reason(e)}") from None
    finally:
        if fd >= 0:
            os.close(fd)


def _mount_hierarchy(kind: str, options: str, own: str, fd: int, flags: int, cgroupns: bool) -> bool:
    """One hierarchy on fd's directory: fresh in a cgroup namespace (the kernel roots it at the
    namespace's cgroup), else a bind of our own cgroup's directory; True for a bind, which the
    caller remounts with flags."""
    target = proc_fd(fd)
    if cgroupns:
        try:
            if kind == "cgroup2":
                sc.mount("cgroup2", target, "cgroup2", flags)
            else:
                sc.mount("systemd" if options == "name=systemd" else "cgroup", target, "cgroup", flags, options)
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EBUSY):
                raise
    sc.mount(own, target, None, sc.MS_BIND | sc.MS_REC)
    return True


def cgroup_hierarchies(exclude: str = "") -> list[tuple[str, str, str, str]]:
    """(fstype, mountpoint, this process's cgroup directory, v1 controller options) per host hierarchy.

    Mounts under exclude (the rootfs, where a bind of /sys repeats them) are left out.
    """
    own: dict[frozenset[str], str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            own[frozenset(controllers.split(",")) if controllers else frozenset()] = path
    with open("/proc/cgroups") as f:
        known = {line.split()[0] for line in f if not line.startswith("#")}
    result = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, options = fields[sep + 1], fields[sep + 3]
            root, mountpoint = fields[3], fields[4]
            if exclude and (mountpoint + "/").startswith(exclude.rstrip("/") + "/"):
                continue
            if fstype == "cgroup2":
                ctrls: list[str] = []
            elif fstype == "cgroup":
                ctrls = [o for o in options.split(",") if o in known or o.startswith("name=")]
            else:
                continue
            path = own.get(frozenset(ctrls), "/")
            rel = os.path.relpath(path, root)
            # our cgroup below the mount's root: its directory; otherwise only the mount is there
            directory = mountpoint if rel.startswith("..") else os.path.normpath(os.path.join(mountpoint, rel))
            result.append((fstype, mountpoint, directory, ",".join(ctrls)))
    return result


def is_char_or_block(path: str) -> bool:
    """True for an existing device node."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
