"""The forked side of `create`: the intermediate process and the container's init, which
builds the container around itself (namespaces, mounts, pivot_root, devices, sysctls...) and then
takes the steps every container process takes (pyouki.become, shared with exec).

Runs after os.fork() of the parent. After pivot_root the host's Python library is out of reach,
so every module used here is imported at the top of this file, in the parent, before the fork.
"""

from __future__ import annotations

import os
import select

from pyouki import rootfs as fs
from pyouki import syscalls as sc
from pyouki.become import (
    NS_FLAGS,
    ProcessPlan,
    become_and_exec,
    close_fds,
    die_with,
    join_namespaces,
    listen_env,
    listen_fds,
    report_failure,
    setgroups_allowed,
)
from pyouki.channel import Channel, fork_child
from pyouki.config import namespaces
from pyouki.errors import PyoukiError, reason
from pyouki.execstub import ExecStub
from pyouki.mounts import CgroupView, cgroup_hierarchies


class Plan(ProcessPlan):
    """Everything create's children need, computed in the parent (fork copies it)."""

    def __init__(self, config: dict, bundle: str, rootfs: str, rootless: bool, no_pivot: bool,
                 preserve_fds: int, fifo_fd: int, container_id: str = "", new_keyring: bool = True,
                 listen: int | None = None) -> None:
        listen = listen_fds() if listen is None else listen  # None: LISTEN_FDS of our environment
        process: dict = config["process"]
        if listen:
            # a copy: the config saved for exec must not hand these to exec'd processes
            process = dict(process, env=[*(process.get("env") or []), *listen_env(listen)])
        super().__init__(process, preserve_fds + listen, namespaces(config))
        self.config = config
        self.bundle = bundle
        self.rootfs = rootfs
        self.rootless = rootless
        self.no_pivot = no_pivot
        self.fifo_fd = fifo_fd
        self.container_id = container_id
        self.new_keyring = new_keyring
        self.new_userns = "user" in self.namespaces and self.namespaces["user"] is None
        self.linux: dict = config.get("linux") or {}
        self.ns_fds = self._open_namespace_paths()
        from pyouki import hooks

        # createRuntime/prestart run in the parent while init waits before pivot_root
        self.hook_sync = hooks.has(config, "prestart", "createRuntime", "createContainer")
        # linux.netDevices: the parent moves them in meanwhile (pyouki.netdev); the same wait keeps
        # linux.sysctl and the hooks from running before they are there
        self.hook_sync = self.hook_sync or bool(self.linux.get("netDevices"))
        self.start_hooks = hooks.has(config, "startContainer")
        from pyouki import wasm

        self.wasm = wasm.handler(config)
        # the host's cgroup hierarchies and our place in them, read before the cgroup namespace
        self.cgroups: CgroupView | None = None

    def _open_namespace_paths(self) -> dict[str, int]:
        fds = {}
        for i, (kind, path) in enumerate(self.namespaces.items()):
            if path:
                try:
                    fds[kind] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as e:
                    raise PyoukiError(f"linux.namespaces[{i}].path: failed to open {path}: "
                                      f"{reason(e)}") from None
        return fds


def intermediate(plan: Plan, down: Channel, up: Channel) -> None:
    """Enter or create the namespaces, then fork init into them; never returns.

    It lives on after that, idle, until create has recorded the container and kills it: init's
    parent-death signal is tied to it, and its own to create.
    """
    try:
        die_with(plan.parent_pid)  # die with create while the set-up is under way
        oom = plan.process.get("oomScoreAdj")
        if oom is not None:
            _write_oom_score_adj(oom)
        join_namespaces(plan)
        if plan.new_userns:
            try:
                sc.unshare(sc.CLONE_NEWUSER)
            except OSError as e:
                raise PyoukiError(f"failed to create a user namespace: {reason(e)}") from None
        up.send("map")
        verb, arg = down.receive()
        if verb != "mapped":
            os._exit(1)  # the parent reports its own error
        plan.setgroups_allowed = arg == "1" and setgroups_allowed()
        if any(m.get("type") == "cgroup" for m in plan.config.get("mounts") or []):
            # in our cgroup now, and not yet in a cgroup namespace that hides where it is
            plan.cgroups = CgroupView(cgroup_hierarchies(plan.rootfs), "cgroup" in plan.namespaces)
        if plan.new_userns:
            try:
                os.setresgid(0, 0, 0)
                os.setresuid(0, 0, 0)
            except OSError:
                pass  # 0 is not mapped: stay the overflow id, with full capabilities inside
            die_with(plan.parent_pid)  # a change of credentials clears the parent-death signal
        # from here on, no process in the container may ptrace us or read our memory
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        flags = 0
        for kind, path in plan.namespaces.items():
            if path is None and kind != "user":
                flags |= NS_FLAGS[kind]
        try:
            sc.unshare(flags)
        except OSError as e:
            names = ", ".join(k for k, p in plan.namespaces.items() if p is None and k != "user")
            raise PyoukiError(f"linux.namespaces: failed to create namespaces ({names}): {reason(e)}") from None
        if "network" in plan.namespaces and plan.namespaces["network"] is None:
            try:
                sc.set_link_up("lo")  # a new network namespace starts with lo down; runc brings it up
            except PermissionError:
                # no CAP_NET_ADMIN here (e.g. under systemd-nspawn): the container still runs, with
                # lo down, rather than not at all
                from pyouki import log

                log.warning("could not bring up lo in the new network namespace: operation not permitted")
        if "time" in plan.namespaces and plan.namespaces["time"] is None:
            _write_time_offsets(plan.linux.get("timeOffsets") or {})
        pid = fork_child(container_init, plan, up, down)
        up.send("pid", str(pid))
        up.close()
        down.close()
        while True:  # until create kills us (or we die with it)
            select.select([], [], [])
    except BaseException as e:  # noqa: BLE001 - anything must still reach the caller as one line
        report_failure(up, "container set-up", e)
    os._exit(1)


def _write_oom_score_adj(value: int) -> None:
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError as e:
        raise PyoukiError(f"process.oomScoreAdj: failed to set {value}: {reason(e)}") from None


def _write_time_offsets(offsets: dict) -> None:
    lines = []
    for clock, name in (("monotonic", "monotonic"), ("boottime", "boottime")):
        off = offsets.get(clock)
        if off:
            lines.append(f"{name} {int(off.get('secs', 0))} {int(off.get('nanosecs', 0))}\n")
    # a non-dumpable process's /proc/self files belong to the host's root, whom a new user namespace
    # does not map (rootless: EACCES): dumpable for the write only, while no container process exists
    sc.prctl(sc.PR_SET_DUMPABLE, 1)
    try:
        for line in lines:
            with open("/proc/self/timens_offsets", "w") as f:
                f.write(line)
    except OSError as e:
        raise PyoukiError(f"linux.timeOffsets: failed to write time namespace offsets: {reason(e)}") from None
    finally:
        sc.prctl(sc.PR_SET_DUMPABLE, 0)


def container_init(plan: Plan, up: Channel, down: Channel) -> None:
    """Build the container around this process, report ready, wait for start, exec; never returns.

    Until create has recorded the container, init must not outlive it: nothing would find it.
    It dies with the intermediate (which dies with create) by a parent-death signal, and after
    `ready` waits for create's `created`; end-of-file instead means create is gone.
    """
    try:
        sc.prctl(sc.PR_SET_PDEATHSIG, 9)
        if _creator_gone(down):  # create (and so the intermediate) died before the signal was armed
            os._exit(1)
        os.setsid()
        stub = ExecStub.prepare(3 + plan.preserve_fds)  # before the container's filesystem and seccomp
        if plan.new_keyring:
            _new_session_keyring(plan.container_id)
        _setup(plan, up, down, stub)
        become_and_exec(plan, stub, lambda exe, env: _until_start(plan, up, down, exe, env))
    except BaseException as e:  # noqa: BLE001
        report_failure(up, "container init", e)
    os._exit(127)


def _until_start(plan: Plan, up: Channel, down: Channel, exe: str, env: dict[str, str]) -> None:
    """init between its set-up and its exec: ready, recorded, started, startContainer hooks."""
    if plan.wasm is not None:  # compiled before ready: a bad module fails create
        plan.wasm = plan.wasm.load(exe)
    if plan.seccomp is not None and plan.seccomp.notify:
        plan.seccomp.load()  # its listener fd reaches the agent through create, still listening (runc's order)
    up.send("ready")
    # the user switch may have cleared the parent-death signal: the channel still tells
    if down.receive()[0] != "created":
        os._exit(1)
    sc.prctl(sc.PR_SET_PDEATHSIG, 0)  # recorded: the container outlives create from now on
    down.close()
    up.close()  # create waits for this end-of-file before it ends the intermediate
    _wait_for_start(plan.fifo_fd)
    if plan.process.get("noNewPrivileges") and plan.seccomp is not None:
        plan.seccomp.load()  # before the startContainer hooks: they run under it in runc too
    if plan.start_hooks:
        from pyouki import hooks

        hooks.run(plan.config, "startContainer", _hook_state(plan, "created", 1), env=env)


def _creator_gone(down: Channel) -> bool:
    """True when create has died: it alone holds the writing end of down."""
    poller = select.poll()
    poller.register(down.read_fd, select.POLLIN)
    return any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))


def _new_session_keyring(container_id: str) -> None:
    """Keep the host's session keyring (and its keys) out of the container, like runc."""
    try:
        sc.join_session_keyring(f"_ses.{container_id}")
    except OSError as e:
        if e.errno not in (1, 13, 38):  # EPERM/EACCES/ENOSYS: keyrings unavailable here; runc goes on too
            raise PyoukiError(f"failed to create a session keyring: {reason(e)}") from None


def _hook_state(plan: Plan, status: str, pid: int) -> dict:
    from pyouki import OCI_VERSION

    return {"ociVersion": OCI_VERSION, "id": plan.container_id, "status": status, "pid": pid,
            "bundle": plan.bundle, "annotations": plan.config.get("annotations") or {}}


def _setup(plan: Plan, up: Channel, down: Channel, stub: ExecStub) -> None:
    config, process, linux = plan.config, plan.process, plan.linux
    in_userns = plan.rootless or "user" in plan.namespaces
    # without a mount namespace of its own the container shares the host's mount table: nothing is
    # mounted (config.validate refuses the fields that would need it) and the rootfs is a chroot
    own_mounts = "mount" in plan.namespaces
    if own_mounts:
        rootfd = fs.prepare(plan.rootfs, linux.get("rootfsPropagation"))
        os.chdir(plan.bundle)  # relative bind sources are relative to the bundle
        specs = fs.do_mounts(config, rootfd, plan.rootless, plan.cgroups)
        fs.create_devices(config, rootfd, specs, in_userns)
    else:
        rootfd = fs.open_rootfs(plan.rootfs)
    if plan.hook_sync:
        # the parent runs prestart and createRuntime hooks now, in the runtime's namespaces
        up.send("hooks")
        if down.receive()[0] != "continue":
            os._exit(1)  # the parent reports the hook's failure
        from pyouki import hooks

        # as runc: in the rootfs (not yet the root), with process.env as given (no HOME added yet)
        hook_env = dict(item.partition("=")[::2] for item in process.get("env") or [])
        hooks.run(config, "createContainer", _hook_state(plan, "creating", os.getpid()), cwd=plan.rootfs, env=hook_env)
    # nothing of the caller's but stdio and the preserved fds may be open once paths resolve in the
    # container: a leaked directory fd would be a way out through /proc/self/fd/N (CVE-2024-21626)
    close_fds(3 + plan.preserve_fds, [*plan.own_fds(up, stub), down.read_fd, plan.fifo_fd, rootfd])
    if own_mounts:
        fs.pivot(rootfd, plan.rootfs, plan.no_pivot)
        fs.reopen_dev_null()
    else:
        fs.write_sysctls(linux.get("sysctl") or {})  # through the host's /proc: the rootfs may have none
        fs.chroot(rootfd, plan.rootfs)
    os.close(rootfd)
    # like runc, a missing process.cwd is created (as the container's root, before root.readonly)
    fs.make_cwd(process.get("cwd") or "/")
    fs.set_root_propagation(linux.get("rootfsPropagation"))
    if config.get("hostname"):
        _set_name(sc.sethostname, config["hostname"], "hostname")
    if config.get("domainname"):
        _set_name(sc.setdomainname, config["domainname"], "domainname")
    if own_mounts:
        fs.write_sysctls(linux.get("sysctl") or {})
    fs.readonly_paths(linux.get("readonlyPaths") or [])
    fs.mask_paths(linux.get("maskedPaths") or [])
    if (config.get("root") or {}).get("readonly"):
        fs.readonly_root()


def _set_name(setter, value: str, field: str) -> None:  # type: ignore[no-untyped-def]
    try:
        setter(value)
    except OSError as e:
        raise PyoukiError(f"{field}: failed to set {value!r}: {reason(e)}") from None


def _wait_for_start(fifo_fd: int) -> None:
    """Block until `start` writes to exec.fifo."""
    poller = select.poll()
    poller.register(fifo_fd, select.POLLIN)
    while True:
        poller.poll()
        try:
            if os.read(fifo_fd, 1):
                break
        except BlockingIOError:
            continue
    os.close(fifo_fd)
