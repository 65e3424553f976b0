"""A small argv parser over the command table, for the commands engines call constantly.

It accepts what click would (long and short names, `--opt=value`, `--` , options after
positional arguments, repeatable options, a command's trailing argument list) and gives up —
returning None so click takes over with its usage message — on anything else, such as --help or
an unknown option.
"""

from __future__ import annotations

from pyouki.cli.table import COMMANDS, GLOBAL_OPTIONS, Cmd, Opt


class Parsed:
    """The result: global options, the command, its options and positional arguments."""

    def __init__(self, command: Cmd, globals_: dict, options: dict, args: dict) -> None:
        self.command = command
        self.globals = globals_
        self.options = options
        self.args = args


def _index(options: tuple[Opt, ...]) -> dict[str, Opt]:
    return {name: opt for opt in options for name in opt.names}


def _take(opt: Opt, value: str | None, argv: list[str], i: int, into: dict) -> int | None:
    """Store opt's value; return the next index, or None when the input is not understood."""
    if opt.kind == "flag":
        if value is not None:
            if value.lower() not in ("true", "false"):
                return None
            into[opt.dest] = value.lower() == "true"
        else:
            into[opt.dest] = True
        return i
    if value is None:
        if i >= len(argv):
            return None
        value = argv[i]
        i += 1
    if opt.choices and value not in opt.choices:
        return None
    if opt.kind == "int":
        if not value.isdigit():
            return None
        into[opt.dest] = int(value)
    elif opt.kind == "list":
        into[opt.dest] = [*(into.get(opt.dest) or ()), value]
    else:
        into[opt.dest] = value
    return i


def parse(argv: list[str]) -> Parsed | None:
    """Parse argv (without the program name), or None if click should handle it."""
    gopts = _index(GLOBAL_OPTIONS)
    globals_ = {o.dest: o.default for o in GLOBAL_OPTIONS}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        name, eq, value = argv[i].partition("=")
        opt = gopts.get(name)
        if opt is None:
            return None
        nxt = _take(opt, value if eq else None, argv, i + 1, globals_)
        if nxt is None:
            return None
        i = nxt
    if i >= len(argv) or argv[i] not in COMMANDS:
        return None
    command = COMMANDS[argv[i]]
    copts = _index(command.options)
    options = {o.dest: ([] if o.kind == "list" else o.default) for o in command.options}
    positional: list[str] = []
    rest: list[str] = []
    i += 1
    only_args = False
    while i < len(argv):
        word = argv[i]
        if command.rest and len(positional) == len(command.args):
            rest = argv[i:]  # runc: everything after the id belongs to the process (or to ps)
            break
        if not only_args and word == "--":
            only_args = True
            i += 1
            continue
        if not only_args and word.startswith("-") and len(word) > 1:
            name, eq, value = word.partition("=")
            opt = copts.get(name)
            if opt is None:
                return None
            nxt = _take(opt, value if eq else None, argv, i + 1, options)
            if nxt is None:
                return None
            i = nxt
            continue
        positional.append(word)
        i += 1
    names = command.args
    if len(positional) > len(names) or any(req for (_, req) in names[len(positional):]):
        return None
    args: dict = {name: (positional[k] if k < len(positional) else None) for k, (name, _) in enumerate(names)}
    if command.rest:
        args[command.rest] = rest
    return Parsed(command, globals_, options, args)
