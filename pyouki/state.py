"""Where containers live on disk and what state they are in.

Each container has a private directory `<root>/<id>/` holding `state.bin` (its record),
`exec.fifo` (present between create and start) and nothing else. The status is never stored:
like crun, it is derived from facts each time (is the pid alive and the same process, is the fifo
still there, is the cgroup frozen), so a crash can't leave it out of date.

The record is written with `marshal` rather than JSON: every engine reads it on every
start/kill/delete, and marshal costs nothing to import.
"""

from __future__ import annotations

import marshal
import os
import time

from pyouki.enginewords import NOT_EXIST
from pyouki.errors import ContainerError, PyoukiError

STATE_FILE = "state.bin"
CONFIG_FILE = "config.bin"  # the bundle's config as it was at create (exec needs it; the bundle may change)
FIFO_FILE = "exec.fifo"
MAX_ID_LENGTH = 1024
_ID_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_REST = _ID_FIRST | frozenset("_.+-")


def validate_id(container_id: str) -> str:
    """Refuse ids that are empty, too long or could name a path outside the state dir."""
    if not container_id:
        raise PyoukiError("container id must not be empty")
    if len(container_id) > MAX_ID_LENGTH:
        raise PyoukiError(f"invalid container id: longer than {MAX_ID_LENGTH} characters")
    if container_id[0] not in _ID_FIRST or not set(container_id) <= _ID_REST or ".." in container_id:
        raise PyoukiError(
            f"invalid container id {container_id!r}: must match [A-Za-z0-9][A-Za-z0-9_.+-]* without '..'"
        )
    return container_id


def in_user_namespace() -> bool:
    """True when this process runs in a user namespace other than the initial one."""
    try:
        with open("/proc/self/uid_map", "rb") as f:
            fields = f.read().split()
    except OSError:
        return False
    return fields[:3] != [b"0", b"0", b"4294967295"]


def is_rootless(setting: str = "auto") -> bool:
    """Whether pyouki must behave as an unprivileged runtime (runc's --rootless)."""
    if setting == "true":
        return True
    if setting == "false":
        return False
    return os.geteuid() != 0 or in_user_namespace()


def default_root() -> str:
    """The state root: /run/pyouki for real root, $XDG_RUNTIME_DIR/pyouki otherwise."""
    if os.geteuid() == 0 and not in_user_namespace():
        return "/run/pyouki"
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime_dir and _usable_dir(runtime_dir):
        return os.path.join(runtime_dir, "pyouki")
    if os.geteuid() == 0:
        # root inside a user namespace (rootless podman) with no runtime dir: runc uses /run
        return "/run/pyouki"
    import platformdirs  # only on this fallback: it costs ~15 ms to import

    candidate = platformdirs.user_runtime_dir()
    if _usable_dir(candidate):
        return os.path.join(candidate, "pyouki")
    return f"/tmp/pyouki-{os.geteuid()}"


def _usable_dir(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def ensure_root(root: str) -> str:
    """Create the state root if needed (0700) and check it is the caller's.

    An existing directory keeps its mode: `--root /tmp` must not lock everyone out of /tmp. Each
    container's own directory is 0700, which is what keeps the records private.
    """
    root = os.path.abspath(root)
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
        st = os.stat(root)
    except OSError as e:
        raise PyoukiError(f"failed to create state directory {root}: {_reason(e)}") from None
    if st.st_uid != os.geteuid():
        raise PyoukiError(f"state directory {root} is owned by uid {st.st_uid}, not by the caller")
    return root


def _reason(e: OSError) -> str:
    return (e.strerror or str(e)).lower()


def process_start_time(pid: int) -> int | None:
    """The start time of pid in clock ticks (field 22 of /proc/PID/stat), None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def rfc3339_now() -> str:
    """The current time as RFC 3339 with nanoseconds, in UTC, like Go's time.RFC3339Nano."""
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{ns % 1_000_000_000:09d}Z"


class Container:
    """One container's directory and record, with the status derived from the facts."""

    def __init__(self, root: str, container_id: str) -> None:
        self.id = validate_id(container_id)
        self.root = root
        self.dir = os.path.join(root, container_id)
        self.record: dict = {}
        self._lock_fd = -1
        self.console_master = -1  # set by create for a foreground run with a terminal

    # -- record ---------------------------------------------------------------------------
    def load(self) -> Container:
        """Read the record; a container with no record does not exist (or is still being created)."""
        try:
            with open(os.path.join(self.dir, STATE_FILE), "rb") as f:
                self.record = marshal.load(f)
        except FileNotFoundError:
            raise ContainerError(f"{self.id}: {NOT_EXIST}") from None
        except (OSError, ValueError, EOFError) as e:
            raise PyoukiError(f"failed to read state of container {self.id}: {e}") from None
        return self

    def save(self) -> None:
        """Write the record atomically (write a temp file, then rename)."""
        tmp = os.path.join(self.dir, STATE_FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, marshal.dumps(self.record, 4))
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(self.dir, STATE_FILE))

    def save_config(self, config: dict) -> None:
        """Keep the config as created, for exec (marshal: cheap, and not read on hot paths)."""
        fd = os.open(os.path.join(self.dir, CONFIG_FILE), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, marshal.dumps(config, 4))
        finally:
            os.close(fd)

    def config(self) -> dict:
        """The config saved at create."""
        try:
            with open(os.path.join(self.dir, CONFIG_FILE), "rb") as f:
                return marshal.load(f)  # type: ignore[no-any-return]
        except (OSError, ValueError, EOFError) as e:
            raise PyoukiError(f"failed to read the config of container {self.id}: {e}") from None

    def exists(self) -> bool:
        return os.path.exists(os.path.join(self.dir, STATE_FILE))

    @property
    def pid(self) -> int:
        return int(self.record.get("pid", 0))

    @property
    def fifo_path(self) -> str:
        return os.path.join(self.dir, FIFO_FILE)

    # -- locking --------------------------------------------------------------------------
    def lock(self) -> Container:
        """Serialize commands on this id: an exclusive flock on the container's directory."""
        import fcntl

        try:
            self._lock_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ContainerError(f"{self.id}: {NOT_EXIST}") from None
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        return self

    @property
    def lock_fd(self) -> int:
        return self._lock_fd

    def unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- status ---------------------------------------------------------------------------
    def alive(self) -> bool:
        """True while the container's init process runs (same pid, same start time)."""
        pid = self.pid
        return pid > 0 and process_start_time(pid) == self.record.get("pid_start")

    def status(self) -> str:
        """creating, created, running, paused or stopped, derived from the facts now."""
        if not self.record:
            return "creating"
        if not self.alive():
            return "stopped"
        if self.record.get("cgroup") and _cgroup_frozen(self.record):
            return "paused"  # even a created container, like runc
        if os.path.exists(self.fifo_path):
            return "created"
        return "running"

    def oci_state(self) -> dict:
        """The state object of the OCI runtime spec (runtime.md, State)."""
        from pyouki import OCI_VERSION

        status = self.status()
        state = {
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "status": status,
            "pid": self.pid if status != "stopped" else 0,
            "bundle": self.record.get("bundle", ""),
            "rootfs": self.record.get("rootfs", ""),
            "created": self.record.get("created", ""),
            "owner": self.record.get("owner", ""),
        }
        annotations = self.record.get("annotations")
        if annotations:
            state["annotations"] = annotations
        return state

    def remove_dir(self) -> None:
        """Remove the container's directory and everything in it."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for name in names:
            path = os.path.join(self.dir, name)
            try:
                if os.path.isdir(path) and not os.path.islink(path):  # notify/ holds a socket
                    for inner in os.listdir(path):
                        os.unlink(os.path.join(path, inner))
                    os.rmdir(path)
                else:
                    os.unlink(path)
            except FileNotFoundError:
                pass
        try:
            os.rmdir(self.dir)
        except FileNotFoundError:
            pass


def _cgroup_frozen(record: dict) -> bool:
    from pyouki.cgroups import frozen_from_state  # reads the one file; no driver import

    return frozen_from_state(record["cgroup"])


def list_ids(root: str) -> list[str]:
    """Ids of the containers under root that have a record, sorted."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if os.path.exists(os.path.join(root, n, STATE_FILE)))
