"""The mounts of `config.mounts`: option parsing (pure) and mounting inside the rootfs.

Destinations are resolved inside the rootfs with symlinks followed *relative to the rootfs*
(`secure_join`), then opened with openat2(RESOLVE_IN_ROOT) and mounted through
/proc/self/fd/N, so a symlink planted in the image can never send a mount to the host.
"""

from __future__ import annotations

import os
import stat

from pyouki import lsm
from pyouki import syscalls as sc
from pyouki.errors import PyoukiError

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
                from pyouki.errors import ConfigError

                raise ConfigError(f"{field}.options", f"option {opt!r} is not supported")
            elif opt == "tmpcopyup":
                pass  # a crun extension; the destination starts empty, as with runc
            else:
                data.append(opt)
        self.data = ",".join(data)
        if self.type == "bind":
            self.flags |= sc.MS_BIND

    @property
    def is_bind(self) -> bool:
        return bool(self.flags & sc.MS_BIND)

    def describe(self) -> str:
        return f"{self.type or 'bind'} on {self.destination}"


def secure_join(root: str, unsafe: str) -> str:
    """Join unsafe to root as if root were '/', following symlinks without ever leaving root."""
    parts = [p for p in unsafe.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        current = os.path.join(root, *resolved, part)
        try:
            target = os.readlink(current)
        except OSError:
            resolved.append(part)  # not a symlink, or not there yet
            continue
        links += 1
        if links > 255:
            raise PyoukiError(f"too many levels of symbolic links in {unsafe}")
        if target.startswith("/"):
            resolved = []
        parts = [p for p in target.split("/") if p not in ("", ".")] + parts
    return os.path.join(root, *resolved)


def reason(e: OSError) -> str:
    """The errno text of an OSError in lowercase, for messages."""
    return (e.strerror or str(e)).lower()


def make_destination(root: str, dest: str, is_dir: bool) -> str:
    """Create dest (a directory, or an empty file for a file bind) inside root; return its host path."""
    path = secure_join(root, dest)
    parent = path if is_dir else os.path.dirname(path)
    # create the missing components one at a time, each re-resolved inside root
    rel = os.path.relpath(parent, root)
    current = root
    if rel != ".":
        for part in rel.split("/"):
            current = secure_join(root, os.path.relpath(os.path.join(current, part), root))
            if not os.path.isdir(current):
                os.mkdir(current, 0o755)
    if not is_dir and not os.path.lexists(path):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644))
    return path


def open_in_root(rootfd: int, root: str, path: str) -> int:
    """Open path (a host path under root) with O_PATH, resolved inside root by the kernel."""
    rel = os.path.relpath(path, root)
    return sc.openat2(rootfd, rel, os.O_PATH, sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS)


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


def mount_one(m: MountSpec, root: str, rootfd: int, rootless: bool) -> None:
    """Mount one config.mounts entry inside root (before pivot_root)."""
    source = m.source
    if m.is_bind:
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
        return mount_cgroup(m, root, rootfd)
    try:
        dest = make_destination(root, m.destination, is_dir)
    except OSError as e:
        raise PyoukiError(
            f"{m.field}.destination: failed to create {m.destination} in the rootfs: {reason(e)}"
        ) from None
    fd = open_in_root(rootfd, root, dest)
    target = f"/proc/self/fd/{fd}"
    try:
        if m.is_bind:
            sc.mount(source, target, None, m.flags & (sc.MS_BIND | sc.MS_REC))
            os.close(fd)
            fd = open_in_root(rootfd, root, dest)
            target = f"/proc/self/fd/{fd}"
            if m.flags & ~(sc.MS_BIND | sc.MS_REC):
                remount_bind(target, m.flags)
        else:
            _mount_fs(m, target, dest, rootless)
        for prop in m.propagation:
            sc.mount(None, dest, None, prop)
        if m.recursive_set or m.recursive_clear:
            sc.mount_setattr(dest, m.recursive_set, m.recursive_clear)
    except OSError as e:
        raise PyoukiError(f"{m.field}: failed to mount {m.describe()}: {reason(e)}") from None
    finally:
        os.close(fd)


def _mount_fs(m: MountSpec, target: str, dest: str, rootless: bool) -> None:
    flags = m.flags & ~sc.MS_REMOUNT
    # the mount label as runc puts it: a context= option on the container's own filesystems
    # (tmpfs, devpts...), a file label on mqueue's root, nothing on proc and sysfs (not labelable)
    data = m.data if m.type in ("proc", "sysfs", "mqueue") else lsm.mount_data(m.data, m.label)
    try:
        sc.mount(m.source or m.type, target, m.type, flags, data or None)
    except PermissionError:
        # in a user namespace sysfs needs a network namespace we own, and mqueue an ipc one:
        # like runc, fall back to a bind mount of the host's
        fallback = {"sysfs": "/sys", "mqueue": "/dev/mqueue"}.get(m.type)
        if not fallback:
            raise
        sc.mount(fallback, target, None, sc.MS_BIND | sc.MS_REC)
        remount_bind(dest, flags | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    else:
        if m.type == "mqueue":
            lsm.set_file_label(target, m.label)  # our own mqueue only, never the host's of the fallback


def mount_cgroup(m: MountSpec, root: str, rootfd: int) -> None:
    """The cgroup filesystem: cgroup2 on a unified host, else a tmpfs with each v1 hierarchy bound in."""
    dest = make_destination(root, m.destination, True)
    hierarchies = cgroup_hierarchies(exclude=root)
    try:
        if not any(kind == "cgroup" for kind, _, _ in hierarchies):
            try:
                sc.mount("cgroup2", dest, "cgroup2", m.flags & ~sc.MS_BIND)
            except PermissionError:
                src = next((mp for kind, mp, _ in hierarchies if kind == "cgroup2"), "/sys/fs/cgroup")
                sc.mount(src, dest, None, sc.MS_BIND | sc.MS_REC)
                remount_bind(dest, m.flags)
            return
        sc.mount("tmpfs", dest, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
                 lsm.mount_data("mode=755", m.label))
        for _kind, mountpoint, own in hierarchies:
            name = os.path.basename(mountpoint)
            sub = os.path.join(dest, name)
            os.mkdir(sub, 0o755)
            src = os.path.join(mountpoint, own.lstrip("/"))
            if not os.path.isdir(src):
                src = mountpoint
            sc.mount(src, sub, None, sc.MS_BIND | sc.MS_REC)
            remount_bind(sub, m.flags | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
            if "," in name:  # co-mounted controllers: cpu -> cpu,cpuacct like the host
                for alias in name.split(","):
                    link = os.path.join(dest, alias)
                    if not os.path.lexists(link):
                        os.symlink(name, link)
        if m.flags & sc.MS_RDONLY:
            remount_bind(dest, sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    except OSError as e:
        raise PyoukiError(f"{m.field}: failed to mount cgroup on {m.destination}: {reason(e)}") from None


def cgroup_hierarchies(exclude: str = "") -> list[tuple[str, str, str]]:
    """(fstype, mountpoint, this process's cgroup path in it) for each cgroup mount of the host.

    Mounts under exclude (the rootfs, where a bind of /sys repeats them) are left out.
    """
    own: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            own[controllers] = path
    result = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, options = fields[sep + 1], fields[sep + 3]
            if exclude and (fields[4] + "/").startswith(exclude.rstrip("/") + "/"):
                continue
            if fstype == "cgroup2":
                result.append((fstype, fields[4], own.get("", "/")))
            elif fstype == "cgroup":
                opts = options.split(",")
                ctrls = [o for o in opts if o not in ("rw", "ro", "nosuid", "nodev", "noexec", "relatime", "xattr")
                         and not o.startswith(("release_agent", "clone_children"))]
                key = ",".join(ctrls)
                result.append((fstype, fields[4], own.get(key, "/")))
    return result


def is_char_or_block(path: str) -> bool:
    """True for an existing device node."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
