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


def _create_options(globals_: dict, options: dict, args: dict):  # type: ignore[no-untyped-def]
    from pyouki.create import CreateOptions

    container_id = _id(args)
    return CreateOptions(
        root=_root(globals_, create=True), container_id=container_id, bundle=options.get("bundle") or ".",
        pid_file=options.get("pid_file"), console_socket=options.get("console_socket"),
        no_pivot=bool(options.get("no_pivot")), no_new_keyring=bool(options.get("no_new_keyring")),
        preserve_fds=int(options.get("preserve_fds") or 0), rootless=is_rootless(globals_.get("rootless") or "auto"),
        systemd_cgroup=bool(globals_.get("systemd_cgroup")) or globals_.get("cgroup_manager") == "systemd",
        cgroups=globals_.get("cgroup_manager") != "disabled",
    )


def cmd_create(globals_: dict, options: dict, args: dict) -> int:
    from pyouki.create import create

    create(_create_options(globals_, options, args))
    return 0


def cmd_run(globals_: dict, options: dict, args: dict) -> int:
    from pyouki.run import run

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
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        for r in rows:
            sys.stdout.write("   ".join(v.ljust(widths[i]) for i, v in enumerate(r)).rstrip() + "\n")
    return 0


def cmd_spec(globals_: dict, options: dict, args: dict) -> int:
    from pyouki.spec import write_spec

    write_spec(options.get("bundle") or ".", bool(options.get("rootless_spec")))
    return 0
