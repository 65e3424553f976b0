"""Logging to --log in runc's formats (logrus text or JSON lines), so engines can parse it.

Opened lazily: a command that logs nothing never touches the file, and JSON escaping needs no
`json` import. Without --log, --debug writes the lines to stderr (as runc does); errors are
left out there, as the one-line `pyouki: ...` message already says them. No `os` either (posix
has the same calls, built in): the commands' fast path (pyouki.cli.hot) logs through here too.
"""

import posix
import sys

from pyouki.record import rfc3339_now

LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "fatal": 50, "panic": 50}
_settings: dict = {"path": "", "format": "text", "level": 30, "fd": -1, "stderr": False}
_ESCAPES = {i: f"\\u{i:04x}" for i in range(32)} | {34: '\\"', 92: "\\\\", 10: "\\n", 9: "\\t", 13: "\\r"}


def json_string(value: str) -> str:
    """A JSON string literal for value (UTF-8 kept as is)."""
    return '"' + value.translate(_ESCAPES) + '"'


def configure(path: str | None, fmt: str = "text", level: str = "warning", debug: bool = False) -> None:
    """Open the log file (an unusable --log fails the command up front, like runc) and set the format."""
    _settings["path"] = path or ""
    if path:
        try:
            flags = posix.O_WRONLY | posix.O_APPEND | posix.O_CREAT | posix.O_CLOEXEC
            _settings["fd"] = posix.open(path, flags, 0o600)
        except OSError as e:
            from pyouki.errors import PyoukiError, reason

            _settings["path"] = ""
            raise PyoukiError(f"failed to open log file {path}: {reason(e)}") from None
    _settings["format"] = fmt if fmt in ("text", "json") else "text"
    _settings["level"] = LEVELS["debug"] if debug else LEVELS.get(level, 30)
    _settings["stderr"] = debug and not _settings["path"]


def on_stderr() -> bool:
    """Whether warnings already reach stderr through the log (--debug without --log)."""
    return bool(_settings["stderr"])


def fileno() -> int:
    """The open --log file's descriptor, -1 without one (not the caller's to pass on; forked children
    keep it until they exec)."""
    return int(_settings["fd"]) if _settings["path"] else -1


def log(level: str, msg: str) -> None:
    """Write one line at level, when the level is enabled and a log file (or --debug) was given."""
    if LEVELS[level] < int(_settings["level"]):
        return
    to_stderr = not _settings["path"]
    if to_stderr and not (_settings["stderr"] and LEVELS[level] < LEVELS["error"]):
        return
    if _settings["format"] == "json":
        line = f'{{"level":"{level}","msg":{json_string(msg)},"time":"{rfc3339_now()}"}}\n'
    else:
        line = f'time="{rfc3339_now()}" level={level} msg={json_string(msg)}\n'
    try:
        posix.write(2 if to_stderr else _settings["fd"], line.encode())
    except OSError as e:
        if not to_stderr:
            from pyouki.errors import reason

            sys.stderr.write(f"pyouki: failed to write log {_settings['path']}: {reason(e)}\n")


def debug(msg: str) -> None:
    log("debug", msg)


def warning(msg: str) -> None:
    log("warning", msg)


def error(msg: str) -> None:
    log("error", msg)
