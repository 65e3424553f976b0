"""`run`: create and start a container, then (in the foreground) wait for it like a shell would.

In the foreground pyouki is the subreaper of the container's init, so it can wait for it,
forwards the signals it receives to it, returns its exit status (128+N for signal N), and
deletes it unless --keep.
"""

from __future__ import annotations

import os
import signal

from pyouki.create import CreateOptions, create
from pyouki.lifecycle import delete, start

# not forwarded: SIGCHLD is ours, SIGWINCH and SIGURG are noise without a terminal, KILL/STOP can't be caught
_NOT_FORWARDED = {signal.SIGCHLD, signal.SIGKILL, signal.SIGSTOP, signal.SIGWINCH, signal.SIGURG}


def run(opts: CreateOptions, detach: bool = False, keep: bool = False) -> int:
    """Run the container; return its exit status (0 when detached)."""
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


def forward_signals(pid: int, except_: tuple[int, ...] = ()) -> None:
    """Pass every signal we can catch on to pid (the container's process)."""

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in signal.valid_signals():
        if sig not in _NOT_FORWARDED and sig not in except_:
            try:
                signal.signal(sig, forward)
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
