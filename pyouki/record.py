"""A container's record on disk and the facts its status is derived from, with nothing but the
interpreter's built-in modules (posix, marshal, fcntl, time).

Two readers share it: pyouki.state (the library's Container, which every verb uses) and
pyouki.cli.hot (the fast path of the commands engines call for every container). So the rules
that keep a command inside its own container's directory (the id check, the directory lock and
its identity check, the record read again after the lock) and the status rules are written once.

It imports no `os`: `python -I -S` does not load it, and its import (`_collections_abc` for
os.environ) is 5 M instructions, a quarter of the interpreter's own start. The error types are
imported only on an error path (creating their classes is ~1 M instructions).
"""

import marshal
import posix

STATE_FILE = "state.bin"
CREATING_FILE = "creating.bin"  # create's own facts (cgroup, init), written before the record
CONFIG_FILE = "config.bin"  # the bundle's config as it was at create (exec needs it; the bundle may change)
FIFO_FILE = "exec.fifo"
MAX_ID_LENGTH = 1024
_ID_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_REST = _ID_FIRST | frozenset("_.+-")
_S_IFMT, _S_IFDIR = 0o170000, 0o040000


def join(parent: str, name: str) -> str:
    """posixpath.join for a relative name (without importing os)."""
    return parent + name if not parent or parent.endswith("/") else parent + "/" + name


def validate_id(container_id: str) -> str:
    """Refuse ids that are empty, too long or could name a path outside the state dir."""
    if not container_id:
        raise _error("container id must not be empty")
    if len(container_id) > MAX_ID_LENGTH:
        raise _error(f"invalid container id: longer than {MAX_ID_LENGTH} characters")
    if container_id[0] not in _ID_FIRST or not set(container_id) <= _ID_REST or ".." in container_id:
        raise _error(f"invalid container id {container_id!r}: must match [A-Za-z0-9][A-Za-z0-9_.+-]* without '..'")
    return container_id


def load(container_dir: str, container_id: str) -> dict:
    """The record of the container in container_dir; a container with no record does not exist
    (or is still being created)."""
    try:
        with open(join(container_dir, STATE_FILE), "rb") as f:
            return marshal.load(f)  # type: ignore[no-any-return]
    except FileNotFoundError:
        raise not_found(container_id) from None
    except OSError as e:
        from pyouki.errors import reason

        raise _error(f"failed to read state of container {container_id}: {reason(e)}") from None
    except (ValueError, EOFError, TypeError) as e:
        raise _error(f"failed to read state of container {container_id}: damaged record ({e})") from None


def lock(container_dir: str, container_id: str, blocking: bool = True) -> int:
    """An exclusive flock on the container's directory: its fd, or -1 when another command holds
    it and blocking is False. Closing the fd releases it.

    Once locked, the directory must still be the one at the path (a command holding the lock may
    have removed it, and a create made a new one with the same id): the lock is worthless
    otherwise, and acting on the path would touch another container. A caller that read the
    record before locking reads it again, as it may have changed while it waited.
    """
    import fcntl  # built in: free

    try:
        fd = posix.open(container_dir, posix.O_RDONLY | posix.O_DIRECTORY | posix.O_CLOEXEC)
    except FileNotFoundError:
        raise not_found(container_id) from None
    except OSError as e:
        from pyouki.errors import reason

        raise _error(f"failed to open the state of container {container_id}: {reason(e)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            posix.close(fd)
            return -1
        held = posix.fstat(fd)
        try:
            now = posix.stat(container_dir)
        except FileNotFoundError:
            now = None
        if held.st_nlink == 0 or now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            raise not_found(container_id)
    except BaseException:
        posix.close(fd)
        raise
    return fd


def proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, start time in clock ticks, exit code) of pid from /proc/PID/stat, zombies
    too; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state); ppid is field 4, starttime 22, exit_code 52
    exit_code = int(fields[49]) if len(fields) > 49 else 0
    return fields[0].decode(), int(fields[1]), int(fields[19]), exit_code


def process_start_time(pid: int) -> int | None:
    """The start time of pid in clock ticks (field 22 of /proc/PID/stat), None if it is gone or a zombie."""
    stat = proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return None
    return stat[2]


def alive(record: dict) -> bool:
    """True while the container's init process runs (same pid, same start time)."""
    pid = int(record.get("pid", 0))
    return pid > 0 and process_start_time(pid) == record.get("pid_start")


def waiting_for_start(container_dir: str) -> bool:
    """True while init waits on exec.fifo for `start`.

    The fifo's presence is not enough: `start` writes to it, then removes it, and a start killed
    in between leaves it behind with init gone on to run the process. Init holds the fifo open
    until it has read start's byte, so a writer can open it only while init waits (ENXIO once
    nobody reads it); opening it writes nothing and disturbs nothing.
    """
    try:
        fd = posix.open(join(container_dir, FIFO_FILE), posix.O_WRONLY | posix.O_NONBLOCK | posix.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as e:
        return e.errno != 6  # ENXIO: nobody waits; anything else (EACCES): trust its presence
    posix.close(fd)
    return True


def status(container_dir: str, record: dict, frozen) -> str:  # type: ignore[no-untyped-def]
    """creating, created, running, paused or stopped, derived from the facts now.

    frozen(cgroup) says whether the record's cgroup is frozen (asked only of a live container
    that has one): pyouki.cgroups.frozen_from_state, or the fast path's frozen_plain."""
    if not record:
        return "creating"
    if not alive(record):
        return "stopped"
    if record.get("cgroup") and frozen(record["cgroup"]):
        return "paused"  # even a created container, like runc
    if waiting_for_start(container_dir):
        return "created"
    return "running"


def oci_state(container_id: str, record: dict, status: str) -> dict:
    """The state object of the OCI runtime spec (runtime.md, State), its keys in the order runc's
    `state` and `list --format json` print them (scripts compare the text)."""
    from pyouki import OCI_VERSION

    state = {
        "ociVersion": OCI_VERSION,
        "id": container_id,
        "pid": int(record.get("pid", 0)) if status != "stopped" else 0,
        "status": status,
        "bundle": record.get("bundle", ""),
        "rootfs": record.get("rootfs", ""),
        "created": record.get("created", ""),
    }
    annotations = record.get("annotations")
    if annotations:
        state["annotations"] = annotations
    state["owner"] = record.get("owner", "")
    return state


def frozen_plain(cgroup: dict) -> bool | None:
    """Whether the cgroup a record describes is frozen, read straight from its file for a plain
    cgroupfs v1/v2 record (also under a systemd unit or a lenient rootless wrapper); None for
    anything else, which only its driver can tell."""
    driver = cgroup.get("driver")
    if driver == "systemd" and cgroup.get("fs"):
        cgroup = cgroup["fs"]
        driver = cgroup.get("driver")
    if driver == "cgroupfs-v1":
        freezer = (cgroup.get("paths") or {}).get("freezer")
        return bool(freezer) and _read(join(str(freezer), "freezer.state")) == b"FROZEN"
    if driver == "cgroupfs-v2" and cgroup.get("path"):
        return b"frozen 1" in _read(join(cgroup["path"], "cgroup.events")).splitlines()
    return None


def remove_plain(cgroup: dict) -> bool:
    """rmdir each directory of a plain cgroupfs v1/v2 record (gone already is fine): all it takes
    when the container made no child cgroups; the same for a systemd record whose scope systemd
    has collected (_systemd_scope_gone). False when that is not enough (a child cgroup, an error,
    a live or older systemd scope, another driver): the driver must remove it, and reports why it
    cannot."""
    driver = cgroup.get("driver")
    if driver == "systemd":
        return _systemd_scope_gone(cgroup) and remove_plain(cgroup["fs"])
    if driver == "cgroupfs-v1":
        paths = cgroup.get("paths") or {}
        dirs = [*dict.fromkeys(paths.values()), *([cgroup["unified"]] if cgroup.get("unified") else [])]
    elif driver == "cgroupfs-v2":
        dirs = [cgroup.get("path")]
    else:
        return False
    for path in dirs:
        if not path:
            return False
        try:
            posix.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError:
            return False
    return True


def unit_cgroup(fs: dict) -> str | None:
    """The cgroup systemd manages for a unit, from the unit's cgroupfs state: v2's own directory,
    v1's in systemd's named hierarchy (the other hierarchies' directories are the runtime's)."""
    path = fs.get("path") if fs.get("driver") == "cgroupfs-v2" else (fs.get("paths") or {}).get("name=systemd")
    return str(path) if path else None


def _systemd_scope_gone(cgroup: dict) -> bool:
    """Whether a systemd-driver record's scope is gone for good, so that removing what cgroupfs
    left is all a delete does: made with CollectMode=inactive-or-failed (systemd unloads it, failed
    or not, once its cgroup is empty) and its cgroup in the hierarchy systemd manages is gone. A
    slice, an older record or a scope still there: the driver removes it (StopUnit,
    ResetFailedUnit)."""
    fs = cgroup.get("fs")
    if not cgroup.get("collect") or str(cgroup.get("unit")).endswith(".slice") or not isinstance(fs, dict):
        return False
    path = unit_cgroup(fs)
    if not path:
        return False
    try:
        posix.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        pass
    return False


def remove_dir(container_dir: str) -> None:
    """Remove the container's directory and everything in it.

    The record goes first and creating.bin last: a delete killed half-way leaves a directory
    that reads as a killed create, whose cgroup the next delete still finds.
    """
    try:
        names = posix.listdir(container_dir)
    except FileNotFoundError:
        return
    names.sort(key=lambda n: (n != STATE_FILE, n == CREATING_FILE))
    for name in names:
        path = join(container_dir, name)
        try:
            try:
                is_dir = posix.lstat(path).st_mode & _S_IFMT == _S_IFDIR  # not through a link
            except OSError:
                is_dir = False
            if is_dir:  # notify/ holds a socket
                for inner in posix.listdir(path):
                    posix.unlink(join(path, inner))
                posix.rmdir(path)
            else:
                posix.unlink(path)
        except FileNotFoundError:
            pass
    try:
        posix.rmdir(container_dir)
    except FileNotFoundError:
        pass


def in_user_namespace() -> bool:
    """True when this process runs in a user namespace other than the initial one."""
    try:
        with open("/proc/self/uid_map", "rb") as f:
            fields = f.read().split()
    except OSError:
        return False
    return fields[:3] != [b"0", b"0", b"4294967295"]


def default_root(runtime_dir: str) -> str | None:
    """The state root: /run/pyouki for real root, <runtime_dir>/pyouki otherwise (runtime_dir is
    $XDG_RUNTIME_DIR); None when neither fits and the caller must guess (pyouki.state)."""
    if posix.geteuid() == 0 and not in_user_namespace():
        return "/run/pyouki"
    if runtime_dir and usable_dir(runtime_dir):
        return join(runtime_dir, "pyouki")
    if posix.geteuid() == 0:
        # root inside a user namespace (rootless podman) with no runtime dir: runc uses /run
        return "/run/pyouki"
    return None


def usable_dir(path: str) -> bool:
    """An existing directory the caller may create entries in."""
    try:
        is_dir = posix.stat(path).st_mode & _S_IFMT == _S_IFDIR
    except (OSError, ValueError):
        return False
    return is_dir and posix.access(path, posix.W_OK | posix.X_OK)


def rfc3339_now() -> str:
    """The current time as RFC 3339 with nanoseconds, in UTC, like Go's time.RFC3339Nano."""
    import time  # built in, and loaded by the interpreter's start

    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{ns % 1_000_000_000:09d}Z"


def not_found(container_id: str) -> Exception:
    """runc's error for an unknown id, the words engines match (pyouki.enginewords.NOT_EXIST)."""
    from pyouki.enginewords import NOT_EXIST
    from pyouki.errors import ContainerNotFound

    return ContainerNotFound(f"{container_id}: {NOT_EXIST}")


def _error(message: str) -> Exception:
    from pyouki.errors import PyoukiError

    return PyoukiError(message)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read().strip()
    except OSError:
        return b""
