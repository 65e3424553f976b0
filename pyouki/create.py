"""`create`: turn a bundle into a container whose process waits for `start`.

The calling process (the parent) checks the config, makes the container's directory and its
exec.fifo, then forks the intermediate process. The intermediate joins or creates the user
namespace (the parent writes its id maps), then the other namespaces, and forks init, which lands
in the new PID namespace. Init builds the filesystem view, drops privileges, reports `ready` and
waits on the fifo. Every step's error comes back over the channel as one line; the parent then
kills what it started and removes the directory, so a failed create leaves nothing behind.

A create that is killed cannot clean up, so nothing it starts outlives it until the container
is recorded: the intermediate dies with the parent (parent-death signal), init with the
intermediate, which stays until the parent releases init after saving the record; and
`creating.bin` names the cgroup and init for a later `delete` of the directory left behind.

The fork and the channel are pyouki.spawn's (shared with exec, the role that joins an existing
container); the children's side is pyouki.init.
"""

from __future__ import annotations

import os

from pyouki import hooks, log, notify
from pyouki.config import load_bundle, namespaces, validate
from pyouki.errors import PyoukiError, reason
from pyouki.spawn import Spawn, kill_and_reap, pass_master
from pyouki.state import FIFO_FILE, Container, process_start_time, rfc3339_now

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (2 ms)
if TYPE_CHECKING:
    from pyouki import init
    from pyouki.cgroups.manager import CgroupManager
    from pyouki.channel import Channel
    from pyouki.intelrdt import Rdt
    from pyouki.netdev import NetDevices


class CreateOptions:
    """What create and run take from the command line."""

    def __init__(self, root: str, container_id: str, bundle: str = ".", pid_file: str | None = None,
                 console_socket: str | None = None, no_pivot: bool = False, no_new_keyring: bool = False,
                 preserve_fds: int = 0, rootless: bool = False, systemd_cgroup: bool = False,
                 cgroups: bool = True, stdio: tuple[int, int, int] | None = None,
                 listen_fds: int | None = None, notify_socket: str | None = None) -> None:
        self.root = root
        self.id = container_id
        self.bundle = bundle
        self.pid_file = pid_file
        self.console_socket = console_socket
        self.no_pivot = no_pivot
        self.no_new_keyring = no_new_keyring
        self.preserve_fds = preserve_fds
        self.rootless = rootless
        self.systemd_cgroup = systemd_cgroup
        self.cgroups = cgroups  # False with crun's --cgroup-manager=disabled
        self.stdio = stdio  # init's stdin/stdout/stderr; None: the caller's own (the CLI's case)
        # None: from the caller's environment (LISTEN_FDS, NOTIFY_SOCKET: the CLI's contract, as
        # runc); the API passes 0 and "" so an application's own are never handed to a container
        self.listen_fds = listen_fds
        self.notify_socket = notify_socket


def create(opts: CreateOptions, subreaper: bool = False, foreground: bool = False) -> Container:
    """Create the container; return it with its record saved (status `created`).

    With process.terminal, the pty master goes to --console-socket, or (foreground `run`) is
    left in container.console_master for the caller to relay.
    """
    container = Container(opts.root, opts.id)
    bundle, config = load_bundle(opts.bundle)
    if os.geteuid() != 0:
        from pyouki.userns import auto

        if auto.wanted(config):
            # a rootful-style config from an unprivileged caller: add a user namespace, as crun does
            auto.add_user_namespace(config)
    rootfs = validate(config, bundle, opts.rootless)
    terminal = bool((config.get("process") or {}).get("terminal"))
    if terminal and not opts.console_socket and not foreground:
        raise PyoukiError("process.terminal: a terminal needs --console-socket when the container is detached")
    if opts.console_socket and not terminal:
        raise PyoukiError("--console-socket: given, but process.terminal is false")
    netdevs = None
    if (config.get("linux") or {}).get("netDevices") is not None:
        from pyouki import netdev  # imports pyroute2 (~150 ms) only for such a config

        netdevs = netdev.NetDevices(netdev.check(config, namespaces(config), opts.rootless))
    container.make_dir()
    init_pid = 0
    cgroup = None
    rdt = None
    spawned = None
    try:
        if (config.get("linux") or {}).get("intelRdt") is not None:
            from pyouki import intelrdt

            rdt = intelrdt.prepare(config, opts.id)
        if opts.cgroups:
            from pyouki.cgroups import make_manager

            linux = config.get("linux") or {}
            mgr = make_manager(linux.get("cgroupsPath"), opts.id, rootless=opts.rootless,
                               systemd=opts.systemd_cgroup, resources=linux.get("resources"))
            if mgr is not None:
                _refuse_frozen(mgr)  # before it is ours to remove: it existed before this create
            cgroup = mgr
        # before anything exists that a killed create would leave: the cgroup is made at apply
        container.save_creating(_creating_facts(cgroup, rdt))
        fifo = os.path.join(container.dir, FIFO_FILE)
        os.mkfifo(fifo, 0o600)
        # opened here and inherited, so init can wait on it whatever uid it runs as; O_RDWR keeps
        # it from ever seeing end-of-file, and `start` gets ENXIO if init has died
        fifo_fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        notify_socket = notify.requested() if opts.notify_socket is None else opts.notify_socket
        if notify_socket:
            notify.prepare(config, container.dir)
        if subreaper:
            from pyouki import syscalls

            syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
        try:
            spawned = _spawn(config, bundle, rootfs, opts, fifo_fd, container, cgroup, rdt, netdevs)
        finally:
            os.close(fifo_fd)
        init_pid = spawned.pid
        if rdt is not None:
            rdt.add_task(init_pid)  # init still waits for start: the container process runs in the group
        nss = namespaces(config)
        container.record = {
            "id": opts.id,
            "pid": init_pid,
            "pid_start": process_start_time(init_pid),
            "bundle": bundle,
            "rootfs": rootfs,
            "created": rfc3339_now(),
            "owner": _owner_name(),
            "annotations": config.get("annotations") or {},
            "rootless": opts.rootless,
            "notify": bool(notify_socket),
            "cgroup": cgroup.to_state() if cgroup is not None else None,
            "hooks": hooks.has(config, "poststart", "poststop"),  # start and delete run them
            # a pid namespace of its own (not joined): kill --all may then signal everything in it
            "pid_ns": "pid" in nss and nss["pid"] is None,
        }
        if rdt is not None:
            container.record["intel_rdt"] = rdt.to_state()
        container.save_config(config)
        container.save()
        if opts.pid_file:
            write_pid_file(opts.pid_file, init_pid)
        master, spawned.master = spawned.master, -1
        container.console_master = pass_master(master, opts.console_socket)
        spawned.release()
    except BaseException:
        if netdevs is not None:
            netdevs.restore()  # before init dies: its network namespace would destroy them
        if spawned is not None:
            spawned.kill()
        try:
            if cgroup is not None:
                cgroup.remove()
            if rdt is not None:
                rdt.remove()
        except PyoukiError as e:
            # the error that matters is the one being raised; the directory stays, so that
            # `delete --force` finds the cgroup in creating.bin and finishes the job
            log.warning(f"container {opts.id}: {e}; delete --force removes it")
        else:
            container.remove_dir()
        raise
    finally:
        container.unlock()
        if netdevs is not None:
            netdevs.close()
    log.debug(f"container {opts.id} created with init pid {init_pid}")
    return container


def _refuse_frozen(cgroup: CgroupManager) -> None:
    """An existing frozen cgroupsPath would freeze the container's first process and hang create
    (and `run`) for ever: refuse it, as runc does."""
    try:
        frozen = cgroup.state() == "frozen"
    except PyoukiError:
        return  # nothing to read yet (a systemd unit is only started with the container)
    if frozen:
        raise PyoukiError("linux.cgroupsPath: the container's cgroup exists and is frozen: thaw it or choose another")


def write_pid_file(path: str, pid: int) -> None:
    """Write the pid atomically: a new temp file in the same directory, then rename.

    The temp name is random and created with O_EXCL|O_NOFOLLOW: the directory may be shared
    (/tmp), and a planted symlink at a predictable name would make root write through it.
    rename() replaces whatever is at path (a symlink included) without following it.
    """
    path = os.path.abspath(path)
    directory, base = os.path.split(path)
    try:
        for _ in range(16):
            tmp = os.path.join(directory, f".{base}.{os.urandom(6).hex()}")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(17, "file exists")
        try:
            os.write(fd, str(pid).encode())
        finally:
            os.close(fd)
        try:
            os.rename(tmp, path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as e:
        raise PyoukiError(f"failed to write pid file {path}: {reason(e)}") from None


def _owner_name() -> str:
    uid = os.geteuid()
    try:
        with open("/etc/passwd") as f:
            for line in f:
                parts = line.split(":")
                if len(parts) > 2 and parts[2] == str(uid):
                    return parts[0]
    except OSError:
        pass
    return str(uid)


def _creating_facts(cgroup: CgroupManager | None, rdt: Rdt | None, init_pid: int = 0,
                    init_start: int | None = None) -> dict:
    """What a killed create leaves for `delete` to remove (state.CREATING_FILE)."""
    facts: dict = {"cgroup": cgroup.to_state() if cgroup is not None else None,
                   "intel_rdt": rdt.to_state() if rdt is not None else None}
    if init_pid:
        facts.update(pid=init_pid, pid_start=init_start)
    return facts


class _Creation(Spawn):
    """create's role on the spawn path: the intermediate creates the namespaces and forks init,
    which waits for `created` once ready."""

    def __init__(self, plan: init.Plan, opts: CreateOptions, container: Container, cgroup: CgroupManager | None,
                 rdt: Rdt | None, netdevs: NetDevices | None) -> None:
        super().__init__(plan, plan.linux.get("seccomp"))
        self.plan: init.Plan = plan
        self.opts = opts
        self.container = container
        self.cgroup = cgroup
        self.rdt = rdt
        self.netdevs = netdevs

    def on_map(self) -> None:
        _enter_cgroup_and_map_ids(self.plan, self.intermediate, self.down, self.cgroup)

    def on_pid(self) -> None:
        self.container.save_creating(_creating_facts(self.cgroup, self.rdt, self.pid, self.pid_start))
        if self.netdevs is not None:  # init's network namespace exists: before the create hooks
            self.netdevs.move_into(self.pid)

    def on_hooks(self) -> None:
        _run_create_hooks(self.plan.config, self.opts, self.plan.bundle, self.pid, self.down)

    def agent_state(self) -> dict:
        return _creating_state(self.plan.config, self.opts, self.plan.bundle, self.pid)

    def release(self) -> None:
        """The container is recorded: tell init to go on by itself (it drops its parent-death
        signal and closes its end), wait for that, then end the intermediate."""
        try:
            self.down.send("created")
            while self.up.receive()[0] != "eof":
                pass
        except OSError:
            pass  # init is gone already: the container is simply stopped
        self.close()
        kill_and_reap(self.intermediate)


def _spawn(config: dict, bundle: str, rootfs: str, opts: CreateOptions, fifo_fd: int, container: Container,
           cgroup: CgroupManager | None, rdt: Rdt | None = None, netdevs: NetDevices | None = None) -> _Creation:
    """Fork the intermediate process and drive the set-up until init is ready; the caller then
    records the container and releases init (or kills it)."""
    from pyouki import bindsources, idmapmount, init  # all init needs, before the fork (none after pivot_root)

    plan = init.Plan(config, bundle, rootfs, opts.rootless, opts.no_pivot, opts.preserve_fds, fifo_fd,
                     opts.id, not opts.no_new_keyring, listen=opts.listen_fds)
    seccomp_config = (config.get("linux") or {}).get("seccomp")
    if seccomp_config:
        # compiled here, on the host, as the caller: the BPF program of a profile is cached in the
        # state root, which saves libseccomp's ~20 ms generation on every create with the same one
        from pyouki.seccomp import compile_filter

        plan.seccomp = compile_filter(seccomp_config, "linux.seccomp", cache_dir=os.path.join(opts.root, ".cache"))
    if plan.hook_sync or plan.start_hooks:
        import subprocess  # noqa: F401  (hooks run from init, some after pivot_root)

        from pyouki import hooks, jsonout  # noqa: F401
    if any(isinstance(m, dict) and idmapmount.wanted(m) for m in config.get("mounts") or []):
        idmapmount.prepare(config, bundle)  # as the runtime: init, in its user namespace, cannot
    if plan.new_userns and os.geteuid() == 0 and "mount" in plan.namespaces:
        bindsources.prepare(config, bundle)  # sources only the host's root reaches, as runc
    spawned = _Creation(plan, opts, container, cgroup, rdt, netdevs)
    try:
        # the lock is on the open file description: a child holding it would keep it forever
        spawned.fork(init.intermediate, plan, close=(container.lock_fd,), stdio=opts.stdio)
        idmapmount.close_all()  # init has its own copies
        bindsources.close_all()
        spawned.drive()
        pids = ((config.get("linux") or {}).get("resources") or {}).get("pids")
        if cgroup is not None and pids:
            # init is forked: the intermediate, idle until release(), forks nothing more, and the
            # kernel takes a limit below the processes already there (it only refuses new forks)
            cgroup.set_resources({"pids": pids})
        return spawned
    except BaseException:
        if netdevs is not None:
            netdevs.restore()  # before init dies: its network namespace would destroy them
        spawned.kill()
        raise


def _creating_state(config: dict, opts: CreateOptions, bundle: str, init_pid: int) -> dict:
    """The container's state while it is created (hooks, the seccomp agent)."""
    from pyouki import OCI_VERSION

    return {"ociVersion": OCI_VERSION, "id": opts.id, "status": "creating", "pid": init_pid, "bundle": bundle,
            "annotations": config.get("annotations") or {}}


def _run_create_hooks(config: dict, opts: CreateOptions, bundle: str, init_pid: int, down: Channel) -> None:
    """prestart then createRuntime, in the runtime namespace, while init waits before pivot_root."""
    from pyouki import hooks

    state = _creating_state(config, opts, bundle, init_pid)
    try:
        hooks.run(config, "prestart", state)
        hooks.run(config, "createRuntime", state)
    except PyoukiError:
        down.send("abort")
        raise
    down.send("continue")


def _enter_cgroup_and_map_ids(plan: init.Plan, pid: int, down: Channel, cgroup: CgroupManager | None) -> None:
    """Put the intermediate in its cgroup (before it makes a cgroup namespace), write its id maps,
    then let it go on; errors go both ways."""
    from pyouki.userns.idmap import write_mappings

    try:
        if cgroup is not None:
            cgroup.apply(pid)
            from pyouki.cgroups.devices import device_rules

            linux = plan.config.get("linux") or {}
            resources = dict(linux.get("resources") or {})
            if plan.rootless:
                # a rootless container cannot own a device cgroup (v1) or attach a filter (v2): runc
                # ignores the rules too; the user namespace already keeps it from creating nodes
                resources.pop("devices", None)
            else:
                resources["devices"] = device_rules(linux)
            # the pids limit comes once init is forked (_spawn): a limit of 1 (or 0) must not keep
            # this intermediate from forking init, as in runc
            resources.pop("pids", None)
            cgroup.set_resources(resources)
        if plan.new_userns:
            linux = plan.config.get("linux") or {}
            plan.setgroups_allowed = write_mappings(pid, linux.get("uidMappings") or [],
                                                    linux.get("gidMappings") or [])
        down.send("mapped", "1" if plan.setgroups_allowed else "0")
    except PyoukiError:
        down.send("abort")
        raise

