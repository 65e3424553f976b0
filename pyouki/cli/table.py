"""The command-line interface, declared once.

Two front ends read this table: a small parser (`fastparse`) that engines hit on every
create/start/state/kill/delete without paying for click's import, and click (`clickapp`) for
--help, usage errors and people. Option names and meanings follow runc.
"""

from __future__ import annotations


class Opt:
    """One option: its names (long first), where its value goes, its kind and help text.

    kind is "flag", "str" or "int". A plain class, not a NamedTuple: `typing` costs 2 ms to import.
    """

    __slots__ = ("names", "dest", "kind", "help", "default", "choices")

    def __init__(self, names: tuple[str, ...], dest: str, kind: str, help: str, default: object = None,
                 choices: tuple[str, ...] = ()) -> None:
        self.names, self.dest, self.kind, self.help = names, dest, kind, help
        self.default = False if kind == "flag" and default is None else default
        self.choices = choices


class Cmd:
    """One command: its options, positional arguments (name, required) and help."""

    __slots__ = ("name", "help", "options", "args")

    def __init__(self, name: str, help: str, options: tuple[Opt, ...] = (),
                 args: tuple[tuple[str, bool], ...] = ()) -> None:
        self.name, self.help, self.options, self.args = name, help, options, args


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
            (_BUNDLE, _CONSOLE, _PIDFILE, _NO_PIVOT, _NO_KEYRING, _PRESERVE,
             Opt(("--detach", "-d"), "detach", "flag", "detach from the container's process"),
             Opt(("--keep",), "keep", "flag", "do not delete the container after it exits")),
            _ID),
        Cmd("list", "list containers started by pyouki with the given root",
            (Opt(("--format", "-f"), "format", "str", "select one of: table or json", "table", ("table", "json")),
             Opt(("--quiet", "-q"), "quiet", "flag", "display only container ids"))),
        Cmd("spec", "create a new specification file",
            (_BUNDLE, Opt(("--rootless",), "rootless_spec", "flag", "generate a configuration for a rootless "
                          "container"))),
    )
}
