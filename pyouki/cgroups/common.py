"""Helpers shared by the cgroupfs drivers: mount discovery, path resolution, file I/O, conversions.

Everything here is either pure logic (unit-tested without root) or a thin wrapper around one
read/write of a cgroup file that turns an OSError into a one-line ConfigError naming the field.
"""

from __future__ import annotations

import errno
import os
import time

from pyouki.errors import ConfigError, PyoukiError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

CGROUP_ROOT = "/sys/fs/cgroup"


class CgroupMount:
    """One cgroup (v1) or cgroup2 mount seen in /proc/self/mountinfo.

    A plain class rather than a dataclass: importing dataclasses costs more than this module.
    """

    __slots__ = ("mountpoint", "root", "fstype", "controllers")

    def __init__(self, mountpoint: str, root: str, fstype: str, controllers: tuple[str, ...] = ()):
        self.mountpoint = mountpoint
        self.root = root  # the cgroup mounted there (not "/" inside a cgroup namespace or bind mount)
        self.fstype = fstype  # "cgroup" or "cgroup2"
        self.controllers = controllers  # v1 only: e.g. ("cpu", "cpuacct") or ("name=systemd",)

    def __repr__(self) -> str:
        return f"CgroupMount({self.mountpoint!r}, {self.root!r}, {self.fstype!r}, {self.controllers!r})"


_V1_KNOWN = frozenset(
    "cpu cpuacct cpuset memory devices freezer blkio pids hugetlb"
    " net_cls net_prio perf_event rdma misc".split()
)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[CgroupMount]:
    """Return the cgroup and cgroup2 mounts listed in a mountinfo text."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        rfields = right.split()
        if len(rfields) < 3 or rfields[0] not in ("cgroup", "cgroup2"):
            continue
        lfields = left.split()
        root, mountpoint = _unescape(lfields[3]), _unescape(lfields[4])
        controllers: tuple[str, ...] = ()
        if rfields[0] == "cgroup":
            opts = rfields[2].split(",")
            controllers = tuple(o for o in opts if o in _V1_KNOWN or o.startswith("name="))
        mounts.append(CgroupMount(mountpoint, root, rfields[0], controllers))
    return mounts


def read_mounts() -> list[CgroupMount]:
    """The cgroup mounts of this process's mount namespace."""
    with open("/proc/self/mountinfo") as f:
        return parse_mountinfo(f.read())


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Map each controller (and "" for the unified hierarchy) to its path from /proc/PID/cgroup."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, path = parts
        if not ctrls:
            out[""] = path
            continue
        for c in ctrls.split(","):
            out[c] = path
    return out


def own_cgroups() -> dict[str, str]:
    """This process's cgroup per controller (key "" is the cgroup2 path)."""
    with open("/proc/self/cgroup") as f:
        return parse_proc_cgroup(f.read())


def mode_from_mounts(mounts: Iterable[CgroupMount], root: str = CGROUP_ROOT) -> str:
    """Classify a host: "unified" (cgroup2 at root), "hybrid" (v1 plus a cgroup2 mount), or "v1"."""
    root = root.rstrip("/") or "/"
    has_v1 = has_v2 = False
    for m in mounts:
        if m.fstype == "cgroup2":
            if m.mountpoint == root:
                return "unified"
            if m.mountpoint.startswith(root + "/"):
                has_v2 = True
        elif m.mountpoint.startswith(root + "/"):
            has_v1 = True
    if has_v1:
        return "hybrid" if has_v2 else "v1"
    return "unified" if has_v2 else "v1"


def clean_path(path: str) -> str:
    """Normalise a cgroupsPath: collapse // and . and refuse .. escaping (like runc's CleanPath)."""
    if not path:
        return ""
    absolute = path.startswith("/")
    parts: list[str] = []
    for p in path.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if parts:
                parts.pop()
            continue  # ".." above the root stays at the root, like filepath.Clean("/"+p)
        parts.append(p)
    joined = "/".join(parts)
    return "/" + joined if absolute else joined


def resolve_path(mountpoint: str, mount_root: str, own: str, cgroups_path: str) -> str:
    """Directory of a container cgroup in one hierarchy, with runc's rules.

    An absolute cgroupsPath is relative to the hierarchy's mount point; a relative one is relative
    to the caller's own cgroup in that hierarchy (own path from /proc/self/cgroup, translated
    through the mount's root so it also works inside a cgroup namespace or a bind mount).
    """
    cg = clean_path(cgroups_path)
    if cg.startswith("/"):
        return os.path.join(mountpoint, cg.lstrip("/")).rstrip("/") or "/"
    own = clean_path("/" + own)
    mroot = clean_path("/" + mount_root)
    if mroot != "/" and (own == mroot or own.startswith(mroot + "/")):
        own = own[len(mroot) :] or "/"
    base = os.path.join(mountpoint, own.lstrip("/")).rstrip("/")
    return os.path.join(base, cg).rstrip("/") if cg else base


def shares_to_weight(shares: int) -> int:
    """runc's cpu.shares (2..262144) to cpu.weight (1..10000) conversion; 0 stays 0 (unset)."""
    if shares == 0:
        return 0
    return 1 + ((shares - 2) * 9999) // 262142


def blkio_weight_to_io_weight(weight: int) -> int:
    """runc's blkio weight (10..1000) to io.weight (1..10000) conversion; 0 stays 0 (unset)."""
    if weight == 0:
        return 0
    return 1 + (weight - 10) * 9999 // 990


def parse_cpu_list(text: str) -> list[int]:
    """Expand a cpuset list such as "0-3,7" into [0, 1, 2, 3, 7]; ValueError when malformed."""
    out: list[int] = []
    text = text.strip()
    if not text:
        return out
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise ValueError(f"invalid cpu list element {part!r}")
        a, b = int(lo), int(hi) if dash else int(lo)
        if b < a:
            raise ValueError(f"invalid cpu range {part!r}")
        out.extend(range(a, b + 1))
    return out


def device_rule_to_v1(rule: dict) -> tuple[str, str]:
    """One OCI device rule as (file, line) for v1: ("devices.allow", "c 1:3 rwm")."""
    dtype = rule.get("type") or "a"
    if dtype not in ("a", "b", "c"):
        raise ValueError(f"invalid device type {dtype!r}")
    major, minor = rule.get("major"), rule.get("minor")
    access = rule.get("access") or "rwm"
    if any(ch not in "rwm" for ch in access):
        raise ValueError(f"invalid device access {access!r}")
    maj = "*" if major is None or major == -1 else str(int(major))
    mnr = "*" if minor is None or minor == -1 else str(int(minor))
    fname = "devices.allow" if rule.get("allow") else "devices.deny"
    if dtype == "a":
        # The kernel's parser takes "a" alone; major/minor/access are implied ("a *:* rwm").
        return fname, "a"
    return fname, f"{dtype} {maj}:{mnr} {access}"


_SIZE_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40, "PB": 1 << 50}


def parse_page_size(size: str) -> int:
    """ "2MB" -> 2097152 (base 1024, as the spec says); ValueError when malformed."""
    s = size.strip().upper()
    for unit in ("KB", "MB", "GB", "TB", "PB", "B"):
        if s.endswith(unit) and s[: -len(unit)].isdigit():
            return int(s[: -len(unit)]) * _SIZE_UNITS[unit]
    raise ValueError(f"invalid page size {size!r}")


def page_size_name(nbytes: int) -> str:
    """2097152 -> "2MB", the spelling the kernel uses in hugetlb.<size>.* file names."""
    for unit in ("GB", "MB", "KB"):
        mult = _SIZE_UNITS[unit]
        if nbytes % mult == 0:
            return f"{nbytes // mult}{unit}"
    return f"{nbytes}B"


def host_page_sizes() -> list[str]:
    """Huge page sizes the kernel supports, as "2MB", "1GB" (from /sys/kernel/mm/hugepages)."""
    try:
        names = os.listdir("/sys/kernel/mm/hugepages")
    except OSError:
        return []
    out = []
    for n in names:
        if n.startswith("hugepages-") and n.endswith("kB"):
            out.append(page_size_name(int(n[len("hugepages-") : -2]) * 1024))
    return sorted(out, key=parse_page_size)


def strerror(e: OSError) -> str:
    """Lowercase errno text, e.g. "invalid argument"."""
    if e.errno is None:
        return str(e).lower()
    return os.strerror(e.errno).lower()


def write_file(directory: str, name: str, value: str | int, field: str) -> None:
    """Write one value to a cgroup file; on failure a ConfigError naming field, value and file."""
    path = os.path.join(directory, name)
    data = str(value)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError(field, f"failed to write {data} to {path}: {strerror(e)}") from None
    try:
        os.write(fd, data.encode())
    except OSError as e:
        raise ConfigError(field, f"failed to write {data} to {path}: {strerror(e)}") from None
    finally:
        os.close(fd)


def read_file(directory: str, name: str) -> str:
    """Read one cgroup file, stripped; PyoukiError on failure."""
    path = os.path.join(directory, name)
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        raise PyoukiError(f"failed to read {path}: {strerror(e)}") from None


def read_int(directory: str, name: str, default: int = 0) -> int:
    """Read a cgroup file holding one number ("max" -> -1); default when absent or unparsable."""
    try:
        with open(os.path.join(directory, name)) as f:
            text = f.read().strip()
    except OSError:
        return default
    if text == "max":
        return -1
    try:
        return int(text)
    except ValueError:
        return default


def read_kv(directory: str, name: str) -> dict[str, int]:
    """Parse a flat-keyed cgroup file ("key value" per line), empty when absent."""
    out: dict[str, int] = {}
    try:
        with open(os.path.join(directory, name)) as f:
            for line in f:
                k, _, v = line.partition(" ")
                try:
                    out[k] = int(v)
                except ValueError:
                    continue
    except OSError:
        pass
    return out


def read_procs(directory: str) -> list[int]:
    """Pids in cgroup.procs of one directory (empty when it does not exist)."""
    try:
        with open(os.path.join(directory, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def pids_max(limit: int) -> int | str:
    """pids.max for linux.resources.pids.limit, the same in every driver: negative is "max"; 0 is a
    real limit (the spec), written as 1 because systemd refuses TasksMax=0 (as runc does)."""
    if limit < 0:
        return "max"
    return max(limit, 1)


def enter(directory: str, pid: int) -> None:
    """Write pid into directory's cgroup.procs; a one-line PyoukiError naming both on failure."""
    try:
        write_file(directory, "cgroup.procs", pid, "linux.cgroupsPath")
    except ConfigError as e:
        why = str(e).split(": ")[-1]
        raise PyoukiError(f"failed to add pid {pid} to cgroup {directory}: {why}") from None


def walk_dirs(top: str) -> Iterator[str]:
    """A cgroup directory and all its descendants, parents first.

    Iterative: a container may nest cgroups deeper than Python's recursion limit (os.walk
    recurses in Python 3.11).
    """
    if not os.path.isdir(top):
        return
    stack = [top]
    while stack:
        d = stack.pop()
        yield d
        try:
            with os.scandir(d) as it:
                children = [e.path for e in it if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue  # removed meanwhile, or deeper than PATH_MAX: nothing to read there
        stack.extend(reversed(children))


def mkdir_p(path: str, field: str = "linux.cgroupsPath") -> list[str]:
    """Create a cgroup directory and missing parents; return the directories created, top first."""
    created: list[str] = []
    missing: list[str] = []
    p = path
    while p and p != "/" and not os.path.isdir(p):
        missing.append(p)
        p = os.path.dirname(p)
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o755)
            created.append(d)
        except FileExistsError:
            pass
        except OSError as e:
            raise ConfigError(field, f"failed to create cgroup {d}: {strerror(e)}") from None
    return created


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def rmdir_tree(path: str) -> None:
    """Remove a cgroup directory and its child cgroups, deepest first; absent is fine.

    Iterative and by directory fds (one open at a time, a stack of names): a container can
    nest its cgroups deeper than Python's recursion limit, and deeper than PATH_MAX.
    """
    try:
        fd = os.open(path, _DIR_FLAGS | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        raise PyoukiError(f"failed to remove cgroup {path}: {strerror(e)}") from None
    names: list[str] = []  # from path down to fd's directory
    try:
        while True:
            child = _first_subdir(fd)
            if child is not None:
                try:
                    sub = os.open(child, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    continue  # gone meanwhile
                except OSError as e:
                    where = os.path.join(path, *names, child)
                    raise PyoukiError(f"failed to remove cgroup {where}: {strerror(e)}") from None
                os.close(fd)
                fd = sub
                names.append(child)
                continue
            if not names:
                break
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            name = names.pop()
            _rmdir(name, fd, os.path.join(path, *names, name))
    finally:
        os.close(fd)
    _rmdir(path, None, path)


def _first_subdir(fd: int) -> str | None:
    with os.scandir(fd) as it:
        for e in it:
            if e.is_dir(follow_symlinks=False):
                return e.name
    return None


def _rmdir(name: str, dir_fd: int | None, shown: str) -> None:
    """rmdir one cgroup; absent is fine.

    rmdir of a cgroup whose last task just exited can fail with EBUSY for a moment; retry a few
    times with a small back-off (bounded) like runc's RemovePath does.
    """
    delay = 0.001
    for attempt in range(8):
        try:
            os.rmdir(name, dir_fd=dir_fd)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or attempt == 7:
                raise PyoukiError(f"failed to remove cgroup {shown}: {strerror(e)}") from None
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def poll_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Call predicate with a growing back-off until it is true or timeout seconds passed."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def field_int(res: dict, key: str, field: str, *, signed: bool = True) -> int | None:
    """An integer value of resources[key], None when absent; ConfigError naming field when not an int."""
    v = res.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{field}.{key}", f"expected an integer, got {v!r}")
    if not signed and v < 0:
        raise ConfigError(f"{field}.{key}", f"must not be negative, got {v}")
    return v


def unsupported(field: str, why: str) -> ConfigError:
    """The error for a resource this host or driver cannot apply."""
    return ConfigError(field, why)


def signal_all_frozen(manager, sig: int, can_freeze: bool) -> None:  # type: ignore[no-untyped-def]
    """Signal every process of manager's cgroup, frozen meanwhile when it can be, so none forks
    its way out between reading the list and the signal (runc does the same)."""
    frozen = False
    if can_freeze:
        try:
            manager.freeze()
            frozen = True
        except PyoukiError:
            pass
    try:
        for pid in manager.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    finally:
        if frozen:
            manager.thaw()
