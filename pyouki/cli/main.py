"""The `pyouki` command: parse argv (fast path or click), run one library call, report errors.

Errors become one line on stderr (`pyouki: MESSAGE`) and, with --log, a log entry in the chosen
format, then exit status 1 (255 for a failed exec, as with runc).
"""

from __future__ import annotations

import os
import sys

from pyouki import log
from pyouki.cli.table import Cmd
from pyouki.errors import PyoukiError


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    argv = sys.argv[1:] if argv is None else argv
    from pyouki.cli.fastparse import parse

    parsed = parse(argv)
    if parsed is None:
        from pyouki.cli.clickapp import main as click_main

        return click_main(argv, dispatch)
    return dispatch(parsed.command, parsed.globals, parsed.options, parsed.args)


def dispatch(command: Cmd, globals_: dict, options: dict, args: dict) -> int:
    """Run one command with parsed options; turn PyoukiError into the one-line failure."""
    try:
        log.configure(globals_.get("log"), globals_.get("log_format") or "text",
                      globals_.get("log_level") or "warning", bool(globals_.get("debug")))
        from pyouki.cli import handlers

        return int(getattr(handlers, "cmd_" + command.name)(globals_, options, args) or 0)
    except PyoukiError as e:
        return fail(str(e))
    except KeyboardInterrupt:
        return 130


def fail(message: str, status: int = 1) -> int:
    """Report message as pyouki's one-line error; return the exit status (1 unless given)."""
    log.error(message)
    try:
        sys.stderr.write(f"pyouki: {message}\n")
        sys.stderr.flush()
    except OSError:
        pass
    return status


if __name__ == "__main__":
    sys.exit(main())
    os._exit(0)
