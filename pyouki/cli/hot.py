"""The fast path of the commands engines call for every container: state, start, kill, delete.

pyouki.cli.main tries it first. Their cost is the interpreter's start plus what they import, and
the full path (fastparse's table, handlers, lifecycle, state, errors, and `os` under them) costs
more than 1 ms over a bare `python -I -S` (issue 13). Here: the argv forms engines use, read by
hand, and each verb's common case done with what the full path uses underneath: the record's
primitives (pyouki.record: id check, record, lock, status), the log (pyouki.log), the JSON
writer and the signal table, none of which imports `os`.

Everything else is declined before anything has changed (run returns None) and the full path
does it, from the start: an option it does not read (and --help, --debug), a relative or
unnormalised --root, a record whose cgroup only its driver can read, hooks, a notify socket,
kill --all, a paused container's SIGKILL, delete of a live or created container, of a killed
create's remains, under the systemd driver unless its scope is collected and gone (otherwise the
unit is systemd's to stop and reset), and every refusal by status (so those messages have one
source). A systemd record's state, start, kill and delete are done here: the frozen check reads
the unit's cgroup through the cgroupfs state the record keeps, and a scope made with
CollectMode=inactive-or-failed whose cgroup is gone needs nothing from systemd. The
errors it does report (no such container, an invalid id or signal, a record it cannot read, a
failed write) are the shared modules' own, reported by main.fail as the full path reports them.
tests/test_hot_path.py runs each verb through both paths and compares stdout, stderr, the exit
status and the log; PYOUKI_HOT=0 in the environment forces the full path.
"""

import posix
import sys

from pyouki import log, record


class _Decline(Exception):
    """Not a case for the fast path: nothing has been changed, the full path takes over."""


# the global options engines pass: str options with their choices (None: any value), and flags
_GLOBAL = {"--root": None, "--log": None, "--log-format": ("text", "json"),
           "--log-level": ("debug", "info", "warning", "warn", "error"), "--rootless": ("auto", "true", "false"),
           "--cgroup-manager": ("cgroupfs", "systemd", "disabled")}
_GLOBAL_FLAGS = ("--systemd-cgroup",)
# each verb: its flag options (all names) and its positional arguments (required, optional)
_VERBS = {"state": ((), 1, 0), "start": ((), 1, 0), "kill": (("--all", "-a"), 1, 1),
          "delete": (("--force", "-f"), 1, 0)}


def run(argv: list[str]) -> int | None:
    """Run argv's command if it is a case for the fast path: its exit status, else None."""
    if posix.environ.get(b"PYOUKI_HOT") == b"0":
        return None
    parsed = _parse(argv)
    if parsed is None:
        return None
    verb, opts, flag, args = parsed
    try:
        log.configure(opts.get("--log"), opts.get("--log-format") or "text", opts.get("--log-level") or "warning")
        root = opts.get("--root") or record.default_root(_env("XDG_RUNTIME_DIR"))
        if root is None or not _normal(root):
            raise _Decline  # the full path's abspath and platformdirs' guess
        container_id = record.validate_id(args[0])
        container_dir = record.join(root, container_id)
        if verb == "state":
            return _state(container_id, container_dir)
        if verb == "start":
            return _start(container_id, container_dir)
        if verb == "kill":
            return _kill(container_id, container_dir, args[1] if len(args) > 1 else None, flag)
        return _delete(container_id, container_dir, flag)
    except _Decline:
        return None
    except Exception as e:  # noqa: BLE001 - reported as the full path reports it (main.dispatch)
        from pyouki.cli.main import fail
        from pyouki.errors import describe

        return fail(describe(e), error=e)


def _state(container_id: str, container_dir: str) -> int:
    from pyouki.jsonout import dumps

    rec = record.load(container_dir, container_id)
    status = record.status(container_dir, rec, _frozen)
    sys.stdout.write(dumps(record.oci_state(container_id, rec, status), indent=True) + "\n")
    return 0


def _start(container_id: str, container_dir: str) -> int:
    rec = record.load(container_dir, container_id)
    lock = record.lock(container_dir, container_id)
    try:
        if rec:
            rec = record.load(container_dir, container_id)  # it may have changed while we waited
        if record.status(container_dir, rec, _frozen) != "created" or rec.get("hooks"):
            raise _Decline  # the refusal, or poststart hooks
        if rec.get("notify") and _env("NOTIFY_SOCKET"):
            raise _Decline  # READY is forwarded by pyouki.notify
        fifo_path = record.join(container_dir, record.FIFO_FILE)
        try:
            fifo = posix.open(fifo_path, posix.O_WRONLY | posix.O_NONBLOCK | posix.O_CLOEXEC)
        except OSError:
            raise _Decline from None  # init is gone: the full path says so
        try:
            posix.write(fifo, b"0")
        finally:
            posix.close(fifo)
        posix.unlink(fifo_path)
    finally:
        posix.close(lock)
    log.debug(f"container {container_id} started")
    return 0


def _kill(container_id: str, container_dir: str, signal_text: str | None, all_processes: bool) -> int:
    from pyouki.signals import parse_signal

    signum = parse_signal(signal_text or "TERM")
    if all_processes:
        raise _Decline  # through the cgroup's driver
    rec = record.load(container_dir, container_id)
    status = record.status(container_dir, rec, _frozen)
    pid = int(rec.get("pid", 0))
    if status == "stopped" or (status == "paused" and signum == 9) or pid <= 1:
        raise _Decline  # runc's refusal; a thaw after the KILL; a damaged record
    try:
        posix.kill(pid, signum)
    except ProcessLookupError:
        pass
    except OSError:
        raise _Decline from None  # not sent: the full path says why
    return 0


def _delete(container_id: str, container_dir: str, force: bool) -> int:
    try:
        lock = record.lock(container_dir, container_id)
    except Exception as e:
        from pyouki.errors import ContainerError

        if force and isinstance(e, ContainerError):
            return 0  # --force of a missing container is no error
        raise
    try:
        try:
            rec = record.load(container_dir, container_id)
        except Exception:
            raise _Decline from None  # no record: a killed create's remains (or an error the full path words)
        if record.status(container_dir, rec, _frozen) != "stopped" or rec.get("hooks") or rec.get("intel_rdt"):
            raise _Decline  # killed first, or refused; poststop hooks; the resctrl group
        cgroup = rec.get("cgroup")
        if cgroup and not record.remove_plain(cgroup):
            raise _Decline  # the driver removes the rest (what rmdir removed stays removed)
        record.remove_dir(container_dir)
    finally:
        posix.close(lock)
    log.debug(f"container {container_id} deleted")
    return 0


def _frozen(cgroup: dict) -> bool:
    frozen = record.frozen_plain(cgroup)
    if frozen is None:
        raise _Decline  # only the driver can tell
    return frozen


def _env(name: str) -> str:
    """os.environ.get(name, "") without os."""
    value = posix.environ.get(name.encode())
    return value.decode(sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()) if value else ""


def _normal(path: str) -> bool:
    """True when os.path.abspath(path) is path (an absolute, normalised path)."""
    if path == "/":
        return True
    if not path.startswith("/") or path.endswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in path[1:].split("/"))


def _parse(argv: list[str]) -> tuple | None:
    """(verb, global options, the verb's flag, positional args), or None for anything that is not
    one of the forms read here (the full parser reads every form, and reports the wrong ones)."""
    opts: dict = {}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        name, eq, value = argv[i].partition("=")
        i += 1
        if name in _GLOBAL_FLAGS and not eq:
            continue
        if name not in _GLOBAL:
            return None  # --debug, --help, --version, a flag with a value, anything unknown
        if not eq:
            if i >= len(argv):
                return None
            value = argv[i]
            i += 1
        choices = _GLOBAL[name]
        if choices is not None and value not in choices:
            return None
        opts[name] = value
    if i >= len(argv) or argv[i] not in _VERBS:
        return None
    verb = argv[i]
    flags, required, optional = _VERBS[verb]
    flag = False
    args = []
    only_args = False
    for word in argv[i + 1:]:
        if not only_args and word == "--":
            only_args = True
        elif not only_args and word.startswith("-") and len(word) > 1:
            if word not in flags:
                return None  # --flag=value, an unknown option
            flag = True
        else:
            args.append(word)
    if not required <= len(args) <= required + optional:
        return None
    return verb, opts, flag, args
