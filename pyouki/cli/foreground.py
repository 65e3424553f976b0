"""The command's foreground: `pyouki run` and `exec` without --detach wait for their process
like a shell.

These are process-wide choices that only the short-lived command may make, so they live in the
CLI layer and the library (pyouki.api) makes none of them: pyouki becomes a child subreaper for
good (the container's process, orphaned when the intermediate process exits, comes back to it),
forwards the signals it receives to the process, relays the terminal, and reaps every child
(waitpid(-1): the command has no children of its own), returning the exit status (128+N for
signal N). `run` deletes the container afterwards unless --keep.
"""

from __future__ import annotations

# the interpreter's own _signal, loaded at its start: `signal` wraps it in enums (4 ms of enum,
# functools and collections on every foreground run and exec)
import _signal
import os

from pyouki import syscalls as sc

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from pyouki.create import CreateOptions
    from pyouki.exec import ExecOptions

# not forwarded: SIGCHLD is ours, SIGWINCH and SIGURG are noise without a terminal, KILL/STOP can't be caught
_NOT_FORWARDED = {_signal.SIGCHLD, _signal.SIGKILL, _signal.SIGSTOP, _signal.SIGWINCH, _signal.SIGURG}


def run(opts: CreateOptions, detach: bool = False, keep: bool = False) -> int:
    """Run the container; return its exit status (0 when detached)."""
    # here, not at the top: exec comes through this module too and needs none of create's modules
    from pyouki.create import create
    from pyouki.lifecycle import delete, start

    container = create(opts, subreaper=not detach, foreground=not detach)
    pid = container.pid
    if detach:
        start(opts.root, opts.id)
        return 0
    forward_signals(pid)
    try:
        if container.console_master >= 0:
            from pyouki.console import inherit_size

            inherit_size(container.console_master)
        start(opts.root, opts.id)
        if container.console_master >= 0:
            from pyouki.console import relay

            relay(container.console_master)
        status = reap(pid)
    except BaseException:
        delete(opts.root, opts.id, force=True)
        raise
    if not keep:
        delete(opts.root, opts.id, force=True)
    return status


def exec_process(root: str, container_id: str, opts: ExecOptions) -> int:
    """Run the process in the container; its exit status in the foreground, 0 when detached."""
    from pyouki.exec import start_process

    if not opts.detach:
        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)  # before the fork: the process must come back to us
    child, master = start_process(root, container_id, opts)
    if opts.detach:
        return 0
    forward_signals(child, except_=(_signal.SIGWINCH,) if master >= 0 else ())
    if master >= 0:
        from pyouki.console import relay

        relay(master)
    return reap(child)


def forward_signals(pid: int, except_: tuple[int, ...] = ()) -> None:
    """Pass every signal we can catch on to pid (the container's process)."""

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in _signal.valid_signals():
        if sig not in _NOT_FORWARDED and sig not in except_:
            try:
                _signal.signal(sig, forward)
            except (OSError, ValueError):
                pass


def reap(pid: int) -> int:
    """Reap children until init exits; orphans of the container come to us too and are reaped."""
    while True:
        try:
            child, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
        if child == pid:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
