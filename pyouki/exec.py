"""`exec`: run another process in a running container.

The caller forks an intermediate process that joins the container's namespaces (its user
namespace first, the mount namespace last) and its cgroup, then forks the new process into the
container's PID namespace. That process takes on the process object (from --process or built
from the container's config plus the flags, like runc), the container's seccomp filter, and
execs. Errors come back over a close-on-exec pipe: end-of-file without a message means the exec
happened.

It is create's spawn path in the role "join an existing container": the fork and the channel are
pyouki.spawn's, the namespace join and the process's last steps pyouki.become's.
"""

from __future__ import annotations

import os

from pyouki import syscalls as sc
from pyouki.channel import fork_child
from pyouki.errors import PyoukiError, reason
from pyouki.spawn import Spawn, pass_master
from pyouki.state import Container

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from pyouki import become
    from pyouki.channel import Channel
    from pyouki.execstub import ExecStub


class ExecOptions:
    """runc's exec flags."""

    def __init__(self, args: list[str] | None = None, process_file: str | None = None, env: list[str] | None = None,
                 cwd: str | None = None, user: str | None = None, additional_gids: list[str] | None = None,
                 caps: list[str] | None = None, no_new_privs: bool = False, apparmor: str | None = None,
                 process_label: str | None = None, tty: bool = False, console_socket: str | None = None,
                 pid_file: str | None = None, detach: bool = False, preserve_fds: int = 0,
                 ignore_paused: bool = False, cgroup: list[str] | str | None = None,
                 stdio: tuple[int, int, int] | None = None) -> None:
        self.args = list(args or [])
        self.process_file = process_file
        self.env = list(env or [])
        self.cwd = cwd
        self.user = user
        self.additional_gids = list(additional_gids or [])
        self.caps = list(caps or [])
        self.no_new_privs = no_new_privs
        self.apparmor = apparmor
        self.process_label = process_label
        self.tty = tty
        self.console_socket = console_socket
        self.pid_file = pid_file
        self.detach = detach
        self.preserve_fds = preserve_fds
        self.ignore_paused = ignore_paused
        self.cgroup = cgroup
        # the process's stdin/stdout/stderr; None: the caller's own (the CLI's case)
        self.stdio = stdio


def build_process(config: dict, opts: ExecOptions) -> dict:
    """The process to run: the --process file, or the container's process with the flags applied."""
    if opts.process_file:
        import json

        try:
            with open(opts.process_file, "rb") as f:
                process = json.load(f)
        except OSError as e:
            raise PyoukiError(f"--process: failed to read {opts.process_file}: {reason(e)}") from None
        except ValueError as e:
            raise PyoukiError(f"--process: failed to parse {opts.process_file}: {e}") from None
        if not isinstance(process, dict):
            raise PyoukiError(f"--process: {opts.process_file} does not hold a process object")
        return process
    if not opts.args:
        raise PyoukiError("exec: no command given (pyouki exec ID COMMAND [ARGS...])")
    base = config.get("process") or {}
    built: dict = {
        "args": opts.args,
        "env": list(base.get("env") or []) + opts.env,
        "cwd": opts.cwd or base.get("cwd") or "/",
        "user": dict(base.get("user") or {}),
        "terminal": opts.tty,
        "noNewPrivileges": bool(base.get("noNewPrivileges")) or opts.no_new_privs,
        "rlimits": base.get("rlimits") or [],
    }
    caps = {k: list(v) for k, v in (base.get("capabilities") or {}).items()}
    for cap in opts.caps:
        # as runc's exec --cap: not inheritable nor ambient, which would pass X on across execve
        for key in ("bounding", "effective", "permitted"):
            caps.setdefault(key, [])
            if cap not in caps[key]:
                caps[key].append(cap)
    if caps:
        built["capabilities"] = caps
    if opts.user:
        uid, _, gid = opts.user.partition(":")
        try:
            built["user"] = {"uid": int(uid), "gid": int(gid) if gid else 0}
        except ValueError:
            raise PyoukiError(f"--user: {opts.user!r} is not uid[:gid]") from None
    if opts.additional_gids:
        try:
            built["user"]["additionalGids"] = [int(g) for g in opts.additional_gids]
        except ValueError:
            raise PyoukiError("--additional-gids: must be numbers") from None
    if opts.apparmor:
        built["apparmorProfile"] = opts.apparmor
    if opts.process_label:
        built["selinuxLabel"] = opts.process_label
    return built


def start_process(root: str, container_id: str, opts: ExecOptions) -> tuple[int, int]:
    """Start the process in the container and return (its pid, the terminal's master fd or -1).

    It is the caller's child only if the caller is a subreaper while this runs (the process is
    forked by an intermediate that exits); nothing here waits for it or touches signals."""
    container = Container(root, container_id).load()
    container.can_exec(opts.ignore_paused)
    config = container.config()
    from pyouki import lsm
    from pyouki.config import check_process

    process = lsm.inherit(build_process(config, opts), config)
    check_process(process)
    lsm.check(process)
    if opts.cgroup:
        from pyouki.cgroups.sub import parse

        parse(opts.cgroup)  # a malformed --cgroup fails before anything starts, as in runc
    if process.get("terminal") and not opts.console_socket and opts.detach:
        raise PyoukiError("process.terminal: a detached exec with a terminal needs --console-socket")
    from pyouki import procattrs  # scheduler, ioPriority (its own or the container's), personality, memoryPolicy

    procattrs.check(config, process)
    return _spawn(container, config, process, opts)


def cpu_affinity(process: dict, key: str) -> list[int]:
    """process.execCPUAffinity.<key> ("0-3,7") as CPU numbers; [] when absent or empty."""
    affinity = process.get("execCPUAffinity") or {}
    field = f"process.execCPUAffinity.{key}"
    if not isinstance(affinity, dict):
        raise PyoukiError("process.execCPUAffinity: must be an object")
    text = affinity.get(key) or ""
    if not isinstance(text, str):
        raise PyoukiError(f"{field}: must be a string such as \"0-3,7\"")
    from pyouki.cgroups.common import parse_cpu_list

    try:
        return parse_cpu_list(text)
    except ValueError as e:
        raise PyoukiError(f"{field}: {e}") from None


def set_affinity(cpus: list[int], field: str) -> None:
    """sched_setaffinity of this process, the error naming the field (a CPU that does not exist)."""
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as e:
        raise PyoukiError(f"{field}: failed to run on CPUs {cpus}: {reason(e)}") from None


class _Execution(Spawn):
    """exec's role on the spawn path: the intermediate joins the container's namespaces and forks
    the process, which reports nothing once it has exec'd (end-of-file is the end)."""

    end = "eof"
    died = "the exec process exited before it started"

    def __init__(self, plan: become.ProcessPlan, container: Container, config: dict) -> None:
        super().__init__(plan, (config.get("linux") or {}).get("seccomp"))
        self.container = container
        self.config = config

    def agent_state(self) -> dict:
        # the process's pid, with the container's state (as runc does)
        st = self.container.oci_state()
        state = {k: st[k] for k in ("ociVersion", "id", "status", "pid", "bundle")}
        return dict(state, annotations=self.config.get("annotations") or {})


def _spawn(container: Container, config: dict, process: dict, opts: ExecOptions) -> tuple[int, int]:
    # everything the child needs is imported now: after joining the mount namespace the host's
    # Python library is out of reach
    import select  # noqa: F401

    from pyouki import become  # brings what the child uses: pyouki.process, prctl, resource
    from pyouki.config import NS_FILES, namespaces

    init_pid = container.pid
    if not os.path.exists(container.fifo_path):
        _wait_for_exec(init_pid)
    plan = become.ProcessPlan(process, opts.preserve_fds, {})
    kinds = namespaces(config)
    try:
        for kind in become.JOIN_ORDER:
            if kind in kinds:
                path = f"/proc/{init_pid}/ns/{NS_FILES[kind]}"
                if kind == "user" and os.readlink(path) == os.readlink("/proc/self/ns/user"):
                    continue  # already there (a container without its own user namespace)
                plan.ns_fds[kind] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        if "mount" not in kinds:
            # the host's mount table is shared: the container's root is init's chroot, entered last
            plan.root_fd = os.open(f"/proc/{init_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        _close_plan_fds(plan)
        raise PyoukiError(f"failed to open the namespaces of container {container.id}: "
                          f"{reason(e)}") from None
    try:
        seccomp_config = (config.get("linux") or {}).get("seccomp")
        if seccomp_config:
            from pyouki.seccomp import compile_filter

            plan.seccomp = compile_filter(seccomp_config, "linux.seccomp",
                                          cache_dir=os.path.join(container.root, ".cache"))
        cgroup = None
        if container.record.get("cgroup"):
            from pyouki.cgroups import manager_from_state

            cgroup = manager_from_state(container.record["cgroup"])
        if opts.cgroup:
            from pyouki.cgroups.sub import sub_cgroup

            cgroup = sub_cgroup(cgroup, opts.cgroup)  # type: ignore[assignment]
        spawn = _Execution(plan, container, config)
    except BaseException:
        _close_plan_fds(plan)
        raise
    try:
        initial, saved = cpu_affinity(process, "initial"), None
        if initial:
            # the intermediate is born on these CPUs, before it moves into the container's cgroup
            saved = os.sched_getaffinity(0)
            set_affinity(initial, "process.execCPUAffinity.initial")
        try:
            spawn.fork(_intermediate, plan, stdio=opts.stdio)
        finally:
            _close_plan_fds(plan)
            if saved is not None:
                os.sched_setaffinity(0, saved)
        if cgroup is not None:
            # the intermediate waits for this, so the process is born inside the container's cgroup
            cgroup.add_task(spawn.intermediate)
        if container.record.get("intel_rdt"):
            from pyouki.intelrdt import Rdt

            Rdt.from_state(container.record["intel_rdt"]).add_task(spawn.intermediate)  # and its RDT group, as runc
        spawn.down.send("go")
        spawn.drive()
        os.waitpid(spawn.intermediate, 0)
        spawn.intermediate = 0
        master, spawn.master = spawn.master, -1
        spawn.master = pass_master(master, opts.console_socket)
        if opts.pid_file:
            from pyouki.create import write_pid_file

            write_pid_file(opts.pid_file, spawn.pid)
    except BaseException:
        spawn.kill()
        raise
    spawn.close()
    return spawn.pid, spawn.master


def _close_plan_fds(plan: become.ProcessPlan) -> None:
    """The namespace fds are the intermediate's: closed here after the fork (or an error)."""
    for fd in plan.ns_fds.values():
        os.close(fd)
    plan.ns_fds.clear()
    if plan.root_fd >= 0:
        os.close(plan.root_fd)
        plan.root_fd = -1


def _wait_for_exec(pid: int, timeout: float = 2.0) -> None:
    """Right after start, init may still be between the fifo and its execve: until then it is not
    dumpable (it holds the runtime's fds), so a caller without CAP_SYS_PTRACE over it (rootless)
    may not open its namespaces yet. Give it the moment it needs (an engine, or the API, can
    exec within a millisecond of start)."""
    import time

    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        try:
            os.readlink(f"/proc/{pid}/ns/user")
            return
        except PermissionError:
            if time.monotonic() > deadline:
                return  # the namespace loop reports it
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        except OSError:
            return


def _intermediate(plan: become.ProcessPlan, down: Channel, up: Channel) -> None:
    """Join the container's namespaces and fork the process into them; never returns."""
    from pyouki import become
    from pyouki.execstub import ExecStub

    try:
        become.die_with(plan.parent_pid)
        # nothing in the container may ptrace us or read our memory while we hold host fds
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        # on the host, before the container's filesystem and seccomp filter
        stub = ExecStub.prepare(3 + plan.preserve_fds)
        if down.receive()[0] != "go":
            os._exit(1)
        down.close()
        plan.setgroups_allowed = become.join_namespaces(plan)
        pid = fork_child(_process, plan, up, stub)
        up.send("pid", str(pid))
        os._exit(0)
    except BaseException as e:  # noqa: BLE001 - must reach the caller as one line
        become.report_failure(up, "exec set-up", e)
    os._exit(1)


def _process(plan: become.ProcessPlan, up: Channel, stub: ExecStub) -> None:
    """Become the process and exec it (become.become_and_exec); errors go back over up; never returns."""
    from pyouki import become

    try:
        sc.prctl(sc.PR_SET_PDEATHSIG, 0)
        # before any path resolves in the container: no fd of the caller's but stdio and the
        # preserved ones may be reachable through /proc/self/fd/N (CVE-2024-21626)
        become.close_fds(3 + plan.preserve_fds, plan.own_fds(up, stub))
        final = cpu_affinity(plan.process, "final")
        if final:  # in the container's cgroup now (a cpuset there reset what initial set)
            set_affinity(final, "process.execCPUAffinity.final")
        os.setsid()  # its own session and process group, with or without a terminal (runc's nsexec)
        become.become_and_exec(plan, stub)
    except BaseException as e:  # noqa: BLE001
        become.report_failure(up, "exec", e)
    os._exit(127)
