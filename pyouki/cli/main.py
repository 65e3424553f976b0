"""The `pyouki` command: parse argv (fast path or click), run one library call, report errors.

The common cases of state/start/kill/delete go through pyouki.cli.hot, which imports almost
nothing; so this module imports nothing at the top but what that path needs too (sys, log).

Errors become one line on stderr (`pyouki: MESSAGE`) and, with --log, a log entry in the chosen
format, then exit status 1 (255 for a failed exec, as with runc). That holds for every exception,
not only pyouki's own: a bug or an unforeseen OSError is still one line (no traceback reaches an
engine parsing our stderr); --debug adds the chain of causes with their tracebacks after it.
"""

import sys

from pyouki import log

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from pyouki.cli.table import Cmd


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script (argv None: this process is the command, see _end)."""
    command = argv is None
    argv = sys.argv[1:] if argv is None else argv
    try:
        from pyouki.cli.hot import run

        status = run(argv)
        if status is None:
            from pyouki.cli.fastparse import parse

            parsed = parse(argv)
            if parsed is None:
                from pyouki.cli.clickapp import main as click_main

                return click_main(argv, dispatch)
            status = dispatch(parsed.command, parsed.globals, parsed.options, parsed.args)
        if command:
            _end(status)
        return status
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - the last resort: outside dispatch (parsing, click)
        from pyouki.errors import describe

        return fail(describe(e), error=e, debug="--debug" in argv)


def _end(status: int) -> None:
    """Exit now, without the interpreter's finalization, once stdout and stderr are flushed.

    Tearing down the modules costs the bare interpreter ~5 M instructions (a quarter of its own
    start, ~1.5 ms), more than a fast-path command does, and `create` ~10 M (~3 ms). The command's
    work is done and written by then: the log and the state files with unbuffered writes, other
    files through `with`; the CLI registers no atexit handler and starts no thread. When a flush
    fails (a closed pipe), return: the normal exit reports it.
    """
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    import posix

    posix._exit(status)


def dispatch(command: "Cmd", globals_: dict, options: dict, args: dict) -> int:
    """Run one command with parsed options; turn PyoukiError into the one-line failure."""
    try:
        log.configure(globals_.get("log"), globals_.get("log_format") or "text",
                      globals_.get("log_level") or "warning", bool(globals_.get("debug")))
        from pyouki.cli import handlers

        return int(getattr(handlers, "cmd_" + command.name)(globals_, options, args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - PyoukiError, and the last resort for anything else
        from pyouki.errors import describe

        return fail(describe(e), error=e, debug=bool(globals_.get("debug")))


def fail(message: str, status: int = 1, error: BaseException | None = None, debug: bool = False) -> int:
    """Report message as pyouki's one-line error (with debug, error's chain after it); return
    the exit status (1 unless given)."""
    message = " ".join(message.split())  # one line, whatever the message holds
    log.error(message)
    lines = [f"pyouki: {message}\n"]
    if debug and error is not None:
        chain = _chain(error)
        if not log.on_stderr():  # to the --log file; without one, the lines below are the debug output
            log.debug(" | ".join(line.rstrip() for line in chain))
        lines += [f"pyouki: debug: {line}\n" for text in chain for line in text.rstrip("\n").split("\n")]
    try:
        sys.stderr.write("".join(lines))
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    return status


def _chain(error: BaseException) -> list[str]:
    """error and every exception it was raised from or while handling, each with its traceback
    (the causes `raise ... from None` hides from Python's own report, too)."""
    import traceback

    texts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        head = "caused by: " if texts else ""
        texts.append(head + "".join(traceback.format_exception(type(current), current, current.__traceback__,
                                                                chain=False)))
        current = current.__cause__ or current.__context__
    return texts


if __name__ == "__main__":
    sys.exit(main())
