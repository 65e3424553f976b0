"""One function per command: turn parsed options into a library call and print its result.

Imports are inside each function, so a command pays only for what it uses.
"""

from __future__ import annotations

import os
import sys

from pyouki.state import default_root, ensure_root, is_rootless, validate_id


def _root(globals_: dict, create: bool = False) -> str:
    root = globals_.get("root") or default_root()
    return ensure_root(root) if create else os.path.abspath(root)


def _id(args: dict) -> str:
    return validate_id(args["container-id"])


def _preserve_fds(options: dict, listen: bool) -> int:
    """--preserve-fds N, checked: the N fds after stdio (and after the LISTEN_FDS ones for a
    new container, as runc places them) must be open."""
    from pyouki import become, log

    count = int(options.get("preserve_fds") or 0)
    become.check_preserved_fds(count, 3 + (become.listen_fds() if listen else 0), log.fileno())
    return count


def _create_options(globals_: dict, options: dict, args: dict):  # type: ignore[no-untyped-def]
    from pyouki.create import CreateOptions

    container_id = _id(args)
    return CreateOptions(
        root=_root(globals_, create=True), container_id=container_id, bundle=options.get("bundle") or ".",
        pid_file=options.get("pid_file"), console_socket=options.get("console_socket"),
        no_pivot=bool(options.get("no_pivot")), no_new_keyring=bool(options.get("no_new_keyring")),
        preserve_fds=_preserve_fds(options, listen=True), rootless=is_rootless(globals_.get("rootless") or "auto"),
        systemd_cgroup=bool(globals_.get("systemd_cgroup")) or globals_.get("cgroup_manager") == "systemd",
        cgroups=globals_.get("cgroup_manager") != "disabled",
    )


def cmd_create(globals_: dict, options: dict, args: dict) -> int:
    from pyouki.create import create

    create(_create_options(globals_, options, args))
    return 0


def cmd_run(globals_: dict, options: dict, args: dict) -> int:
    from pyouki.cli.foreground import run

    return run(_create_options(globals_, options, args), detach=bool(options.get("detach")),
               keep=bool(options.get("keep")))


def cmd_start(globals_: dict, options: dict, args: dict) -> int:
    from pyouki.lifecycle import start

    start(_root(globals_), _id(args))
    return 0


def cmd_state(globals_: dict, options: dict, args: dict) -> int:
    from pyouki.jsonout import dumps
    from pyouki.lifecycle import state

    sys.stdout.write(dumps(state(_root(globals_), _id(args)), indent=True) + "\n")
    return 0


def cmd_kill(globals_: dict, options: dict, args: dict) -> int:
    from pyouki.lifecycle import kill

    kill(_root(globals_), _id(args), args.get("signal") or "TERM", bool(options.get("all")))
    return 0


def cmd_delete(globals_: dict, options: dict, args: dict) -> int:
    from pyouki.lifecycle import delete

    delete(_root(globals_), _id(args), bool(options.get("force")))
    return 0


def cmd_list(globals_: dict, options: dict, args: dict) -> int:
    from pyouki.lifecycle import list_containers

    containers = list_containers(_root(globals_))
    if options.get("quiet"):
        sys.stdout.write("".join(c["id"] + "\n" for c in containers))
    elif options.get("format") == "json":
        from pyouki.jsonout import dumps

        sys.stdout.write(dumps(containers) + "\n")
    else:
        rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
        rows += [(c["id"], str(c["pid"]), c["status"], c["bundle"], c["created"], c["owner"]) for c in containers]
        # runc's tabwriter layout: each column at least 12 wide, 3 spaces of padding
        widths = [max(12, max(len(r[i]) for r in rows) + 3) for i in range(6)]
        for r in rows:
            sys.stdout.write("".join(v.ljust(widths[i]) for i, v in enumerate(r)).rstrip() + "\n")
    return 0


def cmd_spec(globals_: dict, options: dict, args: dict) -> int:
    from pyouki.spec import write_spec

    write_spec(options.get("bundle") or ".", bool(options.get("rootless_spec")))
    return 0


def cmd_exec(globals_: dict, options: dict, args: dict) -> int:
    try:
        return _exec(globals_, options, args)
    except Exception as e:  # noqa: BLE001 - PyoukiError, and the last resort (still exec's failure)
        # runc's contract: a failed exec exits 255 with "exec failed: ...", so the runtime's own
        # failure is told apart from the command's exit status (engines pass that one on)
        from pyouki.cli.main import fail
        from pyouki.errors import describe

        return fail(f"exec failed: {describe(e)}", 255, error=e, debug=bool(globals_.get("debug")))


def _exec(globals_: dict, options: dict, args: dict) -> int:
    try:
        from pyouki.cli.foreground import exec_process
        from pyouki.exec import ExecOptions
    except ImportError as e:  # a partial tree: say so instead of a traceback
        from pyouki.errors import PyoukiError

        raise PyoukiError(f"exec is not available in this build: {e}") from None

    command = list(args.get("command") or [])
    if command[:1] == ["--"]:
        command = command[1:]  # `exec ID -- CMD`: "--" cannot be a command name
    opts = ExecOptions(
        args=command, process_file=options.get("process_file"), env=list(options.get("env") or []),
        cwd=options.get("cwd"), user=options.get("user"), additional_gids=list(options.get("additional_gids") or []),
        caps=list(options.get("caps") or []), no_new_privs=bool(options.get("no_new_privs")),
        apparmor=options.get("apparmor"), process_label=options.get("process_label"), tty=bool(options.get("tty")),
        console_socket=options.get("console_socket"), pid_file=options.get("pid_file"),
        detach=bool(options.get("detach")), preserve_fds=_preserve_fds(options, listen=False),
        ignore_paused=bool(options.get("ignore_paused")), cgroup=options.get("cgroup"),
    )
    return exec_process(_root(globals_), _id(args), opts)


def cmd_pause(globals_: dict, options: dict, args: dict) -> int:
    from pyouki.pause import pause

    pause(_root(globals_), _id(args))
    return 0


def cmd_resume(globals_: dict, options: dict, args: dict) -> int:
    from pyouki.pause import resume

    resume(_root(globals_), _id(args))
    return 0


def cmd_ps(globals_: dict, options: dict, args: dict) -> int:
    from pyouki import ps

    if options.get("format") == "json":
        from pyouki.jsonout import dumps

        sys.stdout.write(dumps(ps.pids(_root(globals_), _id(args))) + "\n")
    else:
        sys.stdout.write(ps.ps_table(_root(globals_), _id(args), list(args.get("ps-args") or [])))
    return 0


def cmd_update(globals_: dict, options: dict, args: dict) -> int:
    from pyouki import update

    if options.get("resources"):
        # like runc: with --resources every other flag is ignored
        resources = update.read_resources(options["resources"])
        rdt = None
    else:
        resources = update.resources_from_flags(options)
        rdt = update.rdt_from_flags(options)
    update.update(_root(globals_), _id(args), resources, rdt)
    return 0


def cmd_events(globals_: dict, options: dict, args: dict) -> int:
    from pyouki.events import events, parse_interval

    interval = parse_interval(options.get("interval") or "5s")
    try:
        events(_root(globals_), _id(args), interval, bool(options.get("stats")))
    except BrokenPipeError:
        pass  # the reader went away: that is how a stream of events ends
    return 0


def cmd_features(globals_: dict, options: dict, args: dict) -> int:
    from pyouki.features import features
    from pyouki.jsonout import dumps

    sys.stdout.write(dumps(features(), indent=True) + "\n")
    return 0


def cmd_check(globals_: dict, options: dict, args: dict) -> int:
    from pyouki.check import report

    text, status = report(True if options.get("rootful") else None, options.get("format") or "text")
    sys.stdout.write(text)
    return status


def cmd_checkpoint(globals_: dict, options: dict, args: dict) -> int:
    from pyouki.criu import checkpoint

    checkpoint(_root(globals_), _id(args), options)
    return 0


def cmd_restore(globals_: dict, options: dict, args: dict) -> int:
    from pyouki.criu import restore

    detach = bool(options.get("detach"))
    return restore(_create_options(globals_, options, args), options, detach=detach,
                   subreaper=not options.get("no_subreaper"))
