"""Where containers live on disk and what state they are in.

Each container has a private directory `<root>/<id>/` holding `state.bin` (its record),
`config.bin`, `creating.bin` (what create made before the record existed) and `exec.fifo`
(present between create and start). The status is never stored: like crun, it is derived from
facts each time (is the pid alive and the same process, is init still waiting on the fifo, is the
cgroup frozen), so a crash can't leave it out of date.

A directory without a record is a create in progress (it holds the directory's lock) or one that
was killed: `creating.bin` then names the cgroup and init it had made, for delete to remove.

The record is written with `marshal` rather than JSON: every engine reads it on every
start/kill/delete, and marshal costs nothing to import.
"""

from __future__ import annotations

import marshal
import os

from pyouki import record
from pyouki.enginewords import EXISTS, NOT_PAUSED, NOT_RUNNING
from pyouki.errors import (
    ContainerError,
    ContainerExists,
    ContainerNotPaused,
    ContainerNotRunning,
    PyoukiError,
    reason,
)

# The record's file names, the id rules and the status facts are pyouki.record's, shared with the
# commands' fast path (pyouki.cli.hot); these names stay importable from here.
from pyouki.record import (  # noqa: F401
    CONFIG_FILE,
    CREATING_FILE,
    FIFO_FILE,
    MAX_ID_LENGTH,
    STATE_FILE,
    in_user_namespace,
    process_start_time,
    rfc3339_now,
    validate_id,
)


def is_rootless(setting: str = "auto") -> bool:
    """Whether pyouki must behave as an unprivileged runtime (runc's --rootless)."""
    if setting == "true":
        return True
    if setting == "false":
        return False
    return os.geteuid() != 0 or in_user_namespace()


def default_root() -> str:
    """The state root: /run/pyouki for real root, $XDG_RUNTIME_DIR/pyouki otherwise."""
    root = record.default_root(os.environ.get("XDG_RUNTIME_DIR", ""))
    if root is not None:
        return root
    import platformdirs  # only on this fallback: it costs ~15 ms to import

    candidate = platformdirs.user_runtime_dir()
    if record.usable_dir(candidate):
        return os.path.join(candidate, "pyouki")
    return f"/tmp/pyouki-{os.geteuid()}"


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
        raise PyoukiError(f"failed to create state directory {root}: {reason(e)}") from None
    if st.st_uid != os.geteuid():
        raise PyoukiError(f"state directory {root} is owned by uid {st.st_uid}, not by the caller")
    return root


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
        self.record = record.load(self.dir, self.id)
        return self

    def save(self) -> None:
        """Write the record atomically (write a temp file, then rename)."""
        self._write_atomic(STATE_FILE, self.record)

    def save_creating(self, facts: dict) -> None:
        """Record what create has made so far (cgroup, init's pid), for a delete after a killed create."""
        self._write_atomic(CREATING_FILE, facts)

    def creating_facts(self) -> dict:
        """What save_creating wrote; {} when nothing (or nothing readable) was."""
        try:
            with open(os.path.join(self.dir, CREATING_FILE), "rb") as f:
                facts = marshal.load(f)
        except (OSError, ValueError, EOFError, TypeError):
            return {}
        return facts if isinstance(facts, dict) else {}

    def _write_atomic(self, name: str, value: dict) -> None:
        tmp = os.path.join(self.dir, name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, marshal.dumps(value, 4))
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(self.dir, name))

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
        """Serialize commands on this id: an exclusive flock on the container's directory.

        Once locked, the directory must still be the one at the path (a command holding the
        lock may have removed it, and a create made a new one with the same id): the lock is
        worthless otherwise, and acting on the path would touch another container. A record
        read before the lock is read again, as it may have changed while we waited.
        """
        self._lock(blocking=True)
        if self.record:
            try:
                self.load()
            except BaseException:
                self.unlock()
                raise
        return self

    def _lock(self, blocking: bool) -> bool:
        # the errors carry runc's wording, which engines match ("container does not exist")
        fd = record.lock(self.dir, self.id, blocking)
        if fd < 0:
            return False
        self._lock_fd = fd
        return True

    def make_dir(self) -> Container:
        """Create the container's directory and lock it (create's first step).

        Under a shared lock on the state root, so that delete, which takes it exclusively before
        it removes a directory without a record, never mistakes this one (made, not yet locked)
        for the remains of a killed create.
        """
        import fcntl

        root_fd = self._open_root()
        try:
            fcntl.flock(root_fd, fcntl.LOCK_SH)
            try:
                os.mkdir(self.dir, 0o700)
            except FileExistsError:
                raise ContainerExists(f"{self.id}: {EXISTS}") from None
            except OSError as e:
                raise PyoukiError(f"failed to create {self.dir}: {reason(e)}") from None
            self._lock(blocking=True)
        finally:
            os.close(root_fd)  # releases the root's lock
        return self

    def _open_root(self) -> int:
        """The state root's fd, whose flock orders create's new directories against delete."""
        try:
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise PyoukiError(f"failed to open state directory {self.root}: {reason(e)}") from None

    def lock_unrecorded(self) -> None:
        """Lock a directory that has no record, for its removal: only while no create holds it
        (a create in progress has it locked, or holds the root's shared lock until it has).

        Returns with the lock held; the record may exist by then (the create finished).
        """
        import fcntl

        while True:
            root_fd = self._open_root()
            try:
                fcntl.flock(root_fd, fcntl.LOCK_EX)
                if self._lock(blocking=False):
                    return
            finally:
                os.close(root_fd)
            # held: by a create still at work (or another command); wait for it without the root's lock
            self._lock(blocking=True)
            if self.exists():
                return
            self.unlock()

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
        return record.alive(self.record)

    def status(self) -> str:
        """creating, created, running, paused or stopped, derived from the facts now."""
        return record.status(self.dir, self.record, _cgroup_frozen)

    def waiting_for_start(self) -> bool:
        """True while init waits on exec.fifo for `start` (see pyouki.record.waiting_for_start)."""
        return record.waiting_for_start(self.dir)

    # -- status guards: every verb asks here, so a status gets the same words and error type
    # from every verb, the CLI's and the Python API's alike. Each returns the status it checked
    # (derived once: the verb acts on what was checked). The words are runc's where an engine
    # matches them (pyouki.enginewords).
    def can_start(self) -> str:
        """`start` needs a created container (ContainerError otherwise)."""
        status = self.status()
        if status != "created":
            raise ContainerError(f"cannot start container {self.id}: it is {status}, not created")
        return status

    def can_kill(self, all_processes: bool = False) -> str:
        """`kill` of init needs a live container; `kill --all` of a stopped one is no error (runc)."""
        status = self.status()
        if status == "stopped" and not all_processes:
            # runc's words: engines (containerd's shim, CRI-O) read them as "already stopped"
            raise self.not_running("kill")
        return status

    def can_delete(self, force: bool = False) -> str:
        """`delete` needs a stopped or created container, or force (ContainerError otherwise)."""
        status = self.status()
        # like runc, a created container (its process never started) goes without --force
        if status not in ("stopped", "created") and not force:
            raise ContainerError(f"cannot delete container {self.id} that is not stopped: {status}")
        return status

    def can_exec(self, ignore_paused: bool = False) -> str:
        """`exec` needs a created or running container, or a paused one with ignore_paused."""
        status = self.status()
        if status == "paused" and not ignore_paused:
            raise ContainerError("cannot exec in a paused container (use --ignore-paused to override)")  # runc's
        if status not in ("running", "created", "paused"):
            raise ContainerNotRunning(f"cannot exec in container {self.id}: it is {status}")
        return status

    def can_pause(self) -> str:
        """`pause` needs a running or created container (ContainerNotRunning otherwise)."""
        status = self.status()
        if status not in ("running", "created"):
            raise ContainerNotRunning(f"cannot pause container {self.id}: {NOT_RUNNING} (it is {status})")
        return status

    def can_resume(self) -> str:
        """`resume` of a stopped container is refused here; whether it is frozen is the freezer's
        to say (a paused created container reports "created"): see not_paused."""
        status = self.status()
        if status == "stopped":
            raise self.not_paused(status)
        return status

    def require_live(self, verb: str) -> str:
        """A verb that acts on live processes (update, events): ContainerNotRunning once stopped."""
        status = self.status()
        if status == "stopped":
            raise self.not_running(verb)
        return status

    def not_running(self, verb: str) -> ContainerNotRunning:
        """runc's refusal of verb on a stopped container, the words engines match."""
        return ContainerNotRunning(f"cannot {verb} container {self.id}: {NOT_RUNNING}")

    def not_paused(self, status: str) -> ContainerNotPaused:
        """runc's refusal to resume a container that is not frozen."""
        return ContainerNotPaused(f"cannot resume container {self.id}: {NOT_PAUSED} (it is {status})")

    def oci_state(self) -> dict:
        """The state object of the OCI runtime spec (runtime.md, State), its keys in the order
        runc's `state` and `list --format json` print them (scripts compare the text)."""
        return record.oci_state(self.id, self.record, self.status())

    def remove_dir(self) -> None:
        """Remove the container's directory and everything in it (record first, creating.bin last)."""
        record.remove_dir(self.dir)


def _cgroup_frozen(cgroup: dict) -> bool:
    from pyouki.cgroups import frozen_from_state  # reads the one file; no driver import

    return frozen_from_state(cgroup)


def list_ids(root: str) -> list[str]:
    """Ids of the containers under root that have a record, sorted."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise PyoukiError(f"failed to read state directory {root}: {reason(e)}") from None
    return sorted(n for n in names if os.path.exists(os.path.join(root, n, STATE_FILE)))
