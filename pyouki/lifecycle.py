"""The verbs that act on an existing container: start, state, kill, delete, list.

Each refreshes the real status first (state.Container.status), checks that the verb fits it,
acts, and leaves the record consistent. They import nothing heavy: engines call them for every
container.
"""

from __future__ import annotations

import os
import time

from pyouki import log
from pyouki.enginewords import NOT_EXIST
from pyouki.errors import ContainerError, ContainerNotFound, PyoukiError, reason
from pyouki.state import Container, list_ids


def load(root: str, container_id: str) -> Container:
    """The container with this id, its record read; a clear error if it does not exist."""
    return Container(root, container_id).load()


def start(root: str, container_id: str, notify_socket: str | None = None) -> None:
    """Let a created container run its process (OCI `start`).

    notify_socket: where READY goes (None: NOTIFY_SOCKET of the environment, the CLI's way)."""
    # where READY goes: the caller's NOTIFY_SOCKET without importing pyouki.notify on the hot path
    target = os.environ.get("NOTIFY_SOCKET", "") if notify_socket is None else notify_socket
    container = load(root, container_id).lock()
    notify_sock = None
    try:
        container.can_start()
        try:
            fd = os.open(container.fifo_path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:  # ENXIO: nobody holds the fifo, init is gone
            raise ContainerError(f"cannot start container {container_id}: its init process is gone "
                                 f"({reason(e)})") from None
        try:
            if container.record.get("notify") and target:
                from pyouki import notify

                # bound before the process runs, so its first READY= is not lost
                notify_sock = notify.bind(container.dir)
            os.write(fd, b"0")
        finally:
            os.close(fd)
        os.unlink(container.fifo_path)
        if container.record.get("hooks"):
            _poststart(container)
    finally:
        container.unlock()
    log.debug(f"container {container_id} started")
    if notify_sock is not None:
        # like runc, start returns once the container says READY (or ends), lock released
        from pyouki import notify

        notify.forward_ready(notify_sock, container.pid, target)


def _poststart(container: Container) -> None:
    """poststart hooks; a failure stops the container (runtime.md, Lifecycle step 9)."""
    from pyouki import hooks

    config = container.config()
    if not hooks.has(config, "poststart"):
        return
    try:
        hooks.run(config, "poststart", container.oci_state())
    except PyoukiError:
        _signal(container.pid, 9)
        raise


def state(root: str, container_id: str) -> dict:
    """The OCI state object of the container."""
    return load(root, container_id).oci_state()


def kill(root: str, container_id: str, signal_text: str = "TERM", all_processes: bool = False) -> None:
    """Send a signal to the container's init (or with all_processes to every process in it)."""
    from pyouki.signals import parse_signal  # only kill needs it

    signum = parse_signal(signal_text)
    container = load(root, container_id)
    status = container.can_kill(all_processes)
    if status == "stopped":
        # like runc, --all is no error on a stopped container (CRI deletes every exited task with
        # `kill --all ID 9`); what is left in its cgroup (children of an init that had no pid
        # namespace of its own) is still signalled. Never the recorded pid: it may be reused.
        if container.record.get("cgroup"):
            from pyouki.cgroups import manager_from_state

            manager = manager_from_state(container.record["cgroup"])
            if manager is not None and manager.pids():
                _kill_cgroup(container, manager, signum)
        return
    if all_processes and container.record.get("cgroup"):
        # through the cgroup, frozen while signalled, so nothing forks its way out (runc does this)
        _kill_cgroup(container, cgroup_manager(container, "kill"), signum)
        return
    pids = container_pids(container) if all_processes else [container.pid]
    for pid in pids:
        try:
            _signal(pid, signum)
        except OSError as e:
            raise PyoukiError(f"failed to send signal {signum} to pid {pid} of container {container_id}: "
                              f"{reason(e)}") from None
    if status == "paused" and signum == 9:
        # a frozen process only dies once thawed (cgroup v1): runc thaws after a SIGKILL, so the
        # engine waiting for the exit (podman's exit file, containerd's task) sees it
        cgroup_manager(container, "kill").thaw()


def cgroup_manager(container: Container, verb: str):  # type: ignore[no-untyped-def]
    """The container's cgroup manager, or a clear error naming verb when it runs without one."""
    manager = None
    if container.record.get("cgroup"):
        from pyouki.cgroups import manager_from_state

        manager = manager_from_state(container.record["cgroup"])
    if manager is None:
        why = ("rootless without cgroup delegation" if container.record.get("rootless")
               else "created with --cgroup-manager disabled")
        raise ContainerError(f"cannot {verb} container {container.id}: it has no cgroup ({why})")
    return manager


def _kill_cgroup(container: Container, manager, signum: int) -> None:  # type: ignore[no-untyped-def]
    """Signal every process in the cgroup; a paused container stays paused unless killed."""
    paused = manager.state() == "frozen"
    try:
        manager.kill_all(signum)
    except OSError as e:
        raise PyoukiError(f"failed to send signal {signum} to the processes of container {container.id}: "
                          f"{reason(e)}") from None
    if paused and signum != 9:
        # kill_all thaws after signalling; keep a paused container paused (a KILL must thaw to act)
        manager.freeze()


def container_pids(container: Container) -> list[int]:
    """Every process of the container: from its cgroup when it has one, else its pid namespace."""
    if container.record.get("cgroup"):
        from pyouki.cgroups import manager_from_state

        manager = manager_from_state(container.record["cgroup"])
        if manager is not None:
            return manager.pids()
    init = container.pid
    try:
        ns = os.readlink(f"/proc/{init}/ns/pid")
    except OSError:
        return []
    if not container.record.get("pid_ns"):
        # without a pid namespace of its own there is no way to tell its processes from others'
        return [init]
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink(f"/proc/{name}/ns/pid") == ns:
                    pids.append(int(name))
            except OSError:
                continue
    return pids


def delete(root: str, container_id: str, force: bool = False) -> None:
    """Remove a stopped container (with force, kill it first); force on a missing id is not an error.

    A directory without a record (a create that was killed) goes too, with what that create had
    made, as runc removes such directories: otherwise the id would stay blocked for good.
    """
    container = Container(root, container_id)
    try:
        # locked first, then read: what another command did while we waited counts
        container.lock()
        if not container.exists():
            container.unlock()
            container.lock_unrecorded()
    except ContainerError:
        if force:
            return
        raise
    try:
        if not container.exists():
            _remove_unrecorded(container)
            if force:
                return
            raise ContainerNotFound(f"{container_id}: {NOT_EXIST}")
        container.load()
        if container.can_delete(force) != "stopped":
            _kill_all_and_wait(container)
        config = container.config() if container.record.get("hooks") else None
        state = container.oci_state()
        _remove_cgroup(container)
        if container.record.get("intel_rdt"):
            from pyouki.intelrdt import Rdt

            Rdt.from_state(container.record["intel_rdt"]).remove()
        container.remove_dir()
        if config is not None:
            from pyouki import hooks

            state["status"] = "stopped"
            hooks.run_poststop(config, state)
    finally:
        container.unlock()
    log.debug(f"container {container_id} deleted")


def _remove_unrecorded(container: Container) -> None:
    """Remove what a killed create left: its init (if it still runs), its cgroup, its resctrl group,
    its directory.

    Init dies by itself when create does (a parent-death signal until create has recorded it),
    but asynchronously: kill it here, and anything in the cgroup, and wait, so the cgroup can go.
    """
    from pyouki.state import process_start_time

    facts = container.creating_facts()
    pid = int(facts.get("pid") or 0)
    if pid > 1 and process_start_time(pid) == facts.get("pid_start"):
        _signal(pid, 9)
        container.record = {"pid": pid, "pid_start": facts.get("pid_start")}
        wait_for_exit(container)
        container.record = {}
    if facts.get("cgroup"):
        from pyouki.cgroups import manager_from_state

        manager = manager_from_state(facts["cgroup"])
        if manager is not None:
            try:
                if manager.pids():
                    manager.kill_all(9)
                    deadline = time.monotonic() + 10
                    while manager.pids() and time.monotonic() < deadline:
                        time.sleep(0.005)
            except (PyoukiError, OSError) as e:
                log.debug(f"container {container.id}: killing what its cgroup holds: {e}")
            manager.remove()
    if facts.get("intel_rdt"):
        from pyouki.intelrdt import Rdt

        Rdt.from_state(facts["intel_rdt"]).remove()
    container.remove_dir()
    log.debug(f"removed the remains of an unfinished create of container {container.id}")


def _kill_all_and_wait(container: Container) -> None:
    if container.record.get("cgroup"):
        # kill_all thaws the cgroup after signalling: a paused container's KILL takes effect
        _kill_cgroup(container, cgroup_manager(container, "delete"), 9)
        if container.alive():
            _signal(container.pid, 9)
    else:
        for pid in container_pids(container) or [container.pid]:
            _signal(pid, 9)
    wait_for_exit(container)


def _signal(pid: int, signum: int) -> None:
    """os.kill for one real process: pid 0 or -1 would signal a whole group or everything."""
    if pid <= 1:
        raise PyoukiError(f"refusing to signal pid {pid}: the container's record is damaged")
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def wait_for_exit(container: Container, timeout: float = 10.0) -> None:
    """Wait until init is gone, on a pidfd when possible (no sleeping poll loop)."""
    try:
        pidfd = os.pidfd_open(container.pid)
    except OSError:
        return  # already gone
    try:
        if not container.alive():
            return
        import select

        select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    # a pidfd is readable once the process is a zombie; its parent reaps it. Give that a moment.
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while container.alive() and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _remove_cgroup(container: Container) -> None:
    if container.record.get("cgroup"):
        from pyouki.cgroups import remove_from_state

        remove_from_state(container.record["cgroup"])


def list_containers(root: str) -> list[dict]:
    """The OCI state of every container under root."""
    result = []
    for container_id in list_ids(root):
        try:
            result.append(load(root, container_id).oci_state())
        except PyoukiError:
            continue
    return result
