"""The command-line interface, declared once.

Two front ends read this table: a small parser (`fastparse`) that engines hit on every
create/start/state/kill/delete without paying for click's import, and click (`clickapp`) for
--help, usage errors and people. Option names and meanings follow runc.
"""

from __future__ import annotations


class Opt:
    """One option: its names (long first), where its value goes, its kind and help text.

    kind is "flag", "str", "int" or "list" (a repeatable string option collected in order, like
    runc's `--env A --env B`). A plain class, not a NamedTuple: `typing` costs 2 ms to import.
    """

    __slots__ = ("names", "dest", "kind", "help", "default", "choices")

    def __init__(self, names: tuple[str, ...], dest: str, kind: str, help: str, default: object = None,
                 choices: tuple[str, ...] = ()) -> None:
        self.names, self.dest, self.kind, self.help = names, dest, kind, help
        self.default = False if kind == "flag" and default is None else default
        self.choices = choices


class Cmd:
    """One command: its options, positional arguments (name, required) and help.

    rest names a trailing argument list, as in runc's `exec ID COMMAND [ARGS...]` and
    `ps ID [PS-ARGS...]`: options are only recognized before the positional arguments, and every
    word after them, dashes and all, goes to the list (args[rest]).

    supported is False for a command that exists so engines can ask about it but always fails
    (checkpoint, restore): its --help exits non-zero, which is how podman detects support.
    """

    __slots__ = ("name", "help", "options", "args", "rest", "supported")

    def __init__(self, name: str, help: str, options: tuple[Opt, ...] = (),
                 args: tuple[tuple[str, bool], ...] = (), rest: str | None = None, supported: bool = True) -> None:
        self.name, self.help, self.options, self.args = name, help, options, args
        self.rest, self.supported = rest, supported


GLOBAL_OPTIONS = (
    Opt(("--root",), "root", "str", "root directory for storage of container state (default: /run/pyouki, "
        "or $XDG_RUNTIME_DIR/pyouki when not root)"),
    Opt(("--log",), "log", "str", "set the log file to write pyouki logs to (default is stderr only)"),
    Opt(("--log-format",), "log_format", "str", "set the log format", "text", ("text", "json")),
    Opt(("--log-level",), "log_level", "str", "log level", "warning",
        ("debug", "info", "warning", "warn", "error")),
    Opt(("--debug",), "debug", "flag", "enable debug logging"),
    Opt(("--rootless",), "rootless", "str", "ignore cgroup permission errors (true, false or auto)", "auto",
        ("auto", "true", "false")),
    Opt(("--systemd-cgroup",), "systemd_cgroup", "flag", "enable systemd cgroup support"),
    Opt(("--cgroup-manager",), "cgroup_manager", "str", "cgroup manager (crun compatible)", None,
        ("cgroupfs", "systemd", "disabled")),
)

_ID = (("container-id", True),)
_PRESERVE = Opt(("--preserve-fds",), "preserve_fds", "int", "pass N additional file descriptors to the container",
                0)
_PIDFILE = Opt(("--pid-file",), "pid_file", "str", "file to write the process id to")
_BUNDLE = Opt(("--bundle", "-b"), "bundle", "str", "path to the root of the bundle directory", ".")
_CONSOLE = Opt(("--console-socket",), "console_socket", "str",
               "path to an AF_UNIX socket which will receive the pty master")
_NO_PIVOT = Opt(("--no-pivot",), "no_pivot", "flag", "do not use pivot_root to jail the process")
_NO_KEYRING = Opt(("--no-new-keyring",), "no_new_keyring", "flag", "do not create a new session keyring")

_DETACH = Opt(("--detach", "-d"), "detach", "flag", "detach from the container's process")


def _flag(names: tuple[str, ...], dest: str, help: str) -> Opt:
    return Opt(names, dest, "flag", help)


def _str(names: tuple[str, ...], dest: str, help: str, default: object = None) -> Opt:
    return Opt(names, dest, "str", help, default)


# runc's `update` flags; values stay strings here and are parsed (units, -1) by pyouki.update,
# which names the flag in its errors.
_UPDATE = (
    _str(("--resources", "-r"), "resources", "path to a file with the resources to update (LinuxResources "
         "JSON), or '-' to read them from standard input; all other options are then ignored"),
    _str(("--blkio-weight",), "blkio_weight", "per cgroup weight, from 10 to 1000"),
    _str(("--cpu-period",), "cpu_period", "CPU CFS period for hardcapping (in usecs), 0 for the system default"),
    _str(("--cpu-quota",), "cpu_quota", "CPU CFS hardcap limit (in usecs) allowed in a period, -1 for none"),
    _str(("--cpu-share", "--cpu-shares"), "cpu_share", "CPU shares (relative weight vs. other containers)"),
    _str(("--cpu-rt-period",), "cpu_rt_period", "CPU realtime period for hardcapping (in usecs)"),
    _str(("--cpu-rt-runtime",), "cpu_rt_runtime", "CPU realtime hardcap limit (in usecs) allowed in a period"),
    _str(("--cpuset-cpus",), "cpuset_cpus", "CPU(s) to use"),
    _str(("--cpuset-mems",), "cpuset_mems", "memory node(s) to use"),
    _str(("--memory",), "memory", "memory limit (in bytes, or with a unit: 64m, 1g)"),
    _str(("--memory-reservation",), "memory_reservation", "memory reservation or soft limit (in bytes)"),
    _str(("--memory-swap",), "memory_swap", "total memory usage (memory + swap); -1 for unlimited swap"),
    _str(("--kernel-memory",), "kernel_memory", "kernel memory limit (deprecated and ignored, as by runc)"),
    _str(("--kernel-memory-tcp",), "kernel_memory_tcp", "kernel TCP buffer limit (deprecated and ignored)"),
    _str(("--pids-limit",), "pids_limit", "maximum number of pids allowed in the container, -1 for none"),
    _str(("--l3-cache-schema",), "l3_cache_schema", "Intel RDT/CAT L3 cache schema (L3:...)"),
    _str(("--mem-bw-schema",), "mem_bw_schema", "Intel RDT/MBA memory bandwidth schema (MB:...)"),
)

_EXEC = (
    _CONSOLE,
    _str(("--cwd",), "cwd", "current working directory in the container"),
    Opt(("--env", "-e"), "env", "list", "set an environment variable (KEY=VALUE), repeatable"),
    _flag(("--tty", "-t"), "tty", "allocate a pseudo-TTY"),
    _str(("--user", "-u"), "user", "UID (format: <uid>[:<gid>])"),
    Opt(("--additional-gids", "-g"), "additional_gids", "list", "additional gids, repeatable"),
    _str(("--process", "-p"), "process_file", "path to the process.json"),
    _DETACH,
    _PIDFILE,
    _str(("--process-label",), "process_label", "set the SELinux label for the process"),
    _str(("--apparmor",), "apparmor", "set the AppArmor profile for the process"),
    _flag(("--no-new-privs",), "no_new_privs", "set the no new privileges value for the process"),
    Opt(("--cap", "-c"), "caps", "list", "add a capability to the bounding set for the process, repeatable"),
    _PRESERVE,
    Opt(("--cgroup",), "cgroup", "list", "run the process in an (existing) sub-cgroup(s). Format is "
        "[<controller>:]<cgroup>, repeatable"),
    _flag(("--ignore-paused",), "ignore_paused", "allow exec in a paused container"),
)

# runc's checkpoint and restore flags, passed to criu by pyouki.criu.
_CRIU_COMMON = (
    _str(("--image-path",), "image_path", "path for the criu image files"),
    _str(("--work-path",), "work_path", "path for saving work files and logs"),
    _flag(("--tcp-established",), "tcp_established", "allow open tcp connections"),
    _flag(("--ext-unix-sk",), "ext_unix_sk", "allow external unix sockets"),
    _flag(("--shell-job",), "shell_job", "allow shell jobs"),
    _flag(("--file-locks",), "file_locks", "handle file locks, for safety"),
    _str(("--manage-cgroups-mode",), "manage_cgroups_mode", "cgroups mode: soft, full or strict"),
    _str(("--empty-ns",), "empty_ns", "create a namespace, but don't restore its properties"),
    _flag(("--auto-dedup",), "auto_dedup", "enable auto deduplication of memory images"),
    _flag(("--lazy-pages",), "lazy_pages", "use userfaultfd to lazily restore memory pages"),
)
_CHECKPOINT = _CRIU_COMMON + (
    _str(("--parent-path",), "parent_path", "path for previous criu image files in pre-dump"),
    _flag(("--leave-running",), "leave_running", "leave the process running after checkpointing"),
    _str(("--status-fd",), "status_fd", "criu writes \\0 to this fd once lazy-pages is ready"),
    _str(("--page-server",), "page_server", "ADDRESS:PORT of the page server"),
    _flag(("--pre-dump",), "pre_dump", "dump the container's memory information only"),
)
_RESTORE = _CRIU_COMMON + (
    _CONSOLE, _BUNDLE, _DETACH, _PIDFILE, _NO_PIVOT,
    _flag(("--no-subreaper",), "no_subreaper", "disable the use of the subreaper"),
    _str(("--lsm-profile",), "lsm_profile", "LSM profile to use during restore (TYPE:NAME)"),
    _str(("--lsm-mount-context",), "lsm_mount_context", "LSM mount context to use during restore"),
)

COMMANDS = {
    c.name: c
    for c in (
        Cmd("create", "create a container", (_BUNDLE, _CONSOLE, _PIDFILE, _NO_PIVOT, _NO_KEYRING, _PRESERVE), _ID),
        Cmd("start", "execute the user-defined process in a created container", (), _ID),
        Cmd("state", "output the state of a container", (), _ID),
        Cmd("kill", "send a signal to the container's init process (default SIGTERM)",
            (Opt(("--all", "-a"), "all", "flag", "send the signal to all processes in the container"),),
            (("container-id", True), ("signal", False))),
        Cmd("delete", "delete any resources held by the container",
            (Opt(("--force", "-f"), "force", "flag", "forcibly delete the container if it is still running"),),
            _ID),
        Cmd("run", "create and run a container",
            (_BUNDLE, _CONSOLE, _PIDFILE, _NO_PIVOT, _NO_KEYRING, _PRESERVE, _DETACH,
             Opt(("--keep",), "keep", "flag", "do not delete the container after it exits")),
            _ID),
        Cmd("exec", "execute a new process inside the container (COMMAND [ARGS...] after the id, or --process)",
            _EXEC, _ID, rest="command"),
        Cmd("list", "list containers started by pyouki with the given root",
            (Opt(("--format", "-f"), "format", "str", "select one of: table or json", "table", ("table", "json")),
             Opt(("--quiet", "-q"), "quiet", "flag", "display only container ids"))),
        Cmd("spec", "create a new specification file",
            (_BUNDLE, Opt(("--rootless",), "rootless_spec", "flag", "generate a configuration for a rootless "
                          "container"))),
        Cmd("pause", "suspend all processes inside the container (cgroup freezer)", (), _ID),
        Cmd("resume", "resume all processes that have been previously paused", (), _ID),
        Cmd("ps", "display the processes running inside a container (PS-ARGS after the id, default -ef)",
            (Opt(("--format", "-f"), "format", "str", "select one of: table or json", "table", ("table", "json")),),
            _ID, rest="ps-args"),
        Cmd("update", "update container resource constraints", _UPDATE, _ID),
        Cmd("events", "display container events: resource usage statistics and OOM notifications",
            (_str(("--interval",), "interval", "set the stats collection interval", "5s"),
             _flag(("--stats",), "stats", "display the container's stats then exit")),
            _ID),
        Cmd("features", "show the enabled features (the OCI features document, JSON)"),
        Cmd("check", "check that this machine is ready for containers of the calling user (each failed check "
            "with the command that fixes it; exit status 0 when ready)",
            (_flag(("--rootful",), "rootful", "check for rootful containers (the default for root)"),
             Opt(("--format", "-f"), "format", "str", "select one of: text or json", "text", ("text", "json")))),
        Cmd("checkpoint", "checkpoint a running container (with criu)", _CHECKPOINT, _ID),
        Cmd("restore", "restore a container from a previous checkpoint (with criu)", _RESTORE, _ID),
    )
}
