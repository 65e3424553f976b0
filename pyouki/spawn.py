"""One spawn path for `create` and `exec`: the fork of the intermediate process and the parent's
side of the channel, shared by the two roles (as youki's builder: a new container, or a process
joining an existing one).

`Spawn` owns the channel's pipes (pyouki.channel), the terminal's socketpair and the seccomp
listener's handover; `fork` starts the intermediate through channel.fork_child (every forked
child ends in os._exit, on every path), and `drive` reads the typed messages once for both roles:

    error    the set-up failed: raised as PyoukiError, the child's line as it is
    eof      every writer has gone: the end for exec (its process exec'd), an error before it
    pid      the container's process (init, or exec's process) as seen from here
    seccomp  that process loaded a filter with a listener: its fd goes to the agent at once
    map      (create) the intermediate waits for its cgroup and id maps
    hooks    (create) init waits while prestart and createRuntime run here
    ready    (create) init is set up and waits for `created`

A role subclasses Spawn for what differs: `end` (the message drive() returns at, with the pid
known), `died` (what an early end-of-file means), and the callbacks on_map, on_pid, on_hooks and
agent_state. The child-side code of both roles is in pyouki.become (namespaces, the process's
last steps), with create's own in pyouki.init, and reports over the same channel.
"""

from __future__ import annotations

import os

from pyouki.channel import fork_child, pipe_pair
from pyouki.errors import PyoukiError
from pyouki.state import process_start_time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (2 ms)
if TYPE_CHECKING:
    from collections.abc import Callable

    from pyouki.become import ProcessPlan
    from pyouki.seccomp_notify import Handover


class Spawn:
    """The intermediate process and the container's process it forks, seen from the parent."""

    end = "ready"  # the message that ends drive(), once the pid is known too
    died = "container init exited before it was ready"  # end-of-file before that

    def __init__(self, plan: ProcessPlan, seccomp_config: dict | None = None) -> None:
        """Make the channel, and the ways plan needs: the terminal's socketpair (plan.console_sock
        is the container's end), the handover of a seccomp listener (plan.seccomp.handover)."""
        self.plan = plan
        self.seccomp_config = seccomp_config or {}
        self.intermediate = 0
        self.pid = 0  # the container's process, once reported
        self.pid_start: int | None = None  # its start time: kill() checks it is still the same process
        self.master = -1  # the terminal's master fd, once received
        self.console = None  # our end of the terminal's socketpair
        self.handover: Handover | None = None
        self.up, self.down, self._child_down, self._child_up = pipe_pair()
        try:
            if plan.process.get("terminal"):
                from pyouki import console

                self.console, plan.console_sock = console.socketpair()
            if plan.seccomp is not None and plan.seccomp.notify:
                from pyouki.seccomp_notify import Handover

                self.handover = plan.seccomp.handover = Handover(self._child_up.write_fd)
        except BaseException:
            self.close()
            raise

    def fork(self, body: Callable[..., object], *args: object, close: tuple[int, ...] = (),
             stdio: tuple[int, int, int] | None = None) -> None:
        """Fork the intermediate, which runs body(*args, down, up) with the child's ends of the
        channel, after closing ours and the fds in close, and with stdio as its stdin, stdout and
        stderr (the API's; the CLI's are inherited). It ends in os._exit whatever happens."""
        try:
            self.intermediate = fork_child(self._in_child, body, args, close, stdio)
        finally:
            self._child_up.close()
            self._child_down.close()
            if self.plan.console_sock is not None:
                self.plan.console_sock.close()  # the container's end: its copy is in the child
            if self.handover is not None:
                self.handover.close_child_end()

    def _in_child(self, body: Callable[..., object], args: tuple, close: tuple[int, ...],
                  stdio: tuple[int, int, int] | None) -> None:
        self.up.close()
        self.down.close()
        if self.console is not None:
            self.console.close()
        for fd in close:
            os.close(fd)
        if stdio is not None:
            from pyouki.process import redirect_stdio

            redirect_stdio(stdio)
        body(*args, self._child_down, self._child_up)

    def drive(self) -> None:
        """Answer the children's messages until `end` has come and the process's pid is known;
        then take the terminal's master when there is one. A child's error is raised here."""
        ended = notify_pending = hooks_pending = False
        try:
            while not (ended and self.pid):
                # the intermediate and the process share the pipe: the process's messages may
                # come before the intermediate's "pid"; what needs the pid waits for it
                verb, arg = self.up.receive()
                if verb == "error":
                    raise PyoukiError(arg)
                if verb == "eof" and not (self.end == "eof" and self.pid):
                    raise PyoukiError(self.died)
                if verb == self.end:
                    ended = True
                elif verb == "pid":
                    self.pid = int(arg)
                    self.pid_start = process_start_time(self.pid)
                    self.on_pid()
                elif verb == "map":
                    self.on_map()
                elif verb == "hooks":
                    hooks_pending = True
                elif verb == "seccomp":
                    notify_pending = True
                if notify_pending and self.pid and self.handover is not None:
                    notify_pending = False
                    self.handover.forward(self.seccomp_config, self.pid, self.agent_state())
                if hooks_pending and self.pid:
                    hooks_pending = False
                    self.on_hooks()
        finally:
            if self.handover is not None:
                self.handover.close()
        if self.console is not None:
            from pyouki.console import receive_master

            self.master = receive_master(self.console)
            self.console.close()
            self.console = None

    def on_map(self) -> None:
        """`map`: the intermediate waits for its cgroup and id maps (create)."""

    def on_pid(self) -> None:
        """`pid`: self.pid is the container's process (self.pid_start its start time)."""

    def on_hooks(self) -> None:
        """`hooks`: init waits for the prestart and createRuntime hooks (create)."""

    def agent_state(self) -> dict:
        """The container's state sent to the seccomp agent with the listener fd."""
        raise NotImplementedError

    def kill(self) -> None:
        """After an error: kill and reap what was started, the container's process first (the
        intermediate still holds it as its child, so its pid cannot have been reused)."""
        self.close()
        if self.master >= 0:
            os.close(self.master)
            self.master = -1
        if self.pid and process_start_time(self.pid) == self.pid_start:
            kill_and_reap(self.pid)
        if self.intermediate:
            kill_and_reap(self.intermediate)

    def close(self) -> None:
        """Close the parent's ends."""
        for channel in (self.up, self.down, self._child_up, self._child_down):
            channel.close()
        if self.console is not None:
            self.console.close()
            self.console = None
        if self.handover is not None:
            self.handover.close()


def pass_master(master: int, console_socket: str | None) -> int:
    """Send the terminal's master to --console-socket and close it (-1 returned); without a
    socket it stays the caller's (foreground `run`, the API)."""
    if master < 0 or not console_socket:
        return master
    from pyouki.console import send_to_console_socket

    try:
        send_to_console_socket(console_socket, master)
    finally:
        os.close(master)
    return -1


def kill_and_reap(pid: int) -> None:
    """SIGKILL a process we started and reap it when it is ours (child, or orphan of our subreaping);
    otherwise (init is the intermediate's child) wait until it has exited, so that its cgroup is
    empty by the time the caller removes it."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return  # gone already
    try:
        try:
            os.kill(pid, 9)  # SIGKILL; the signal module costs 3 ms to import
        except ProcessLookupError:
            return
        try:
            os.waitpid(pid, 0)  # ours when we are its subreaper
            return
        except ChildProcessError:
            pass
        import select

        select.select([pidfd], [], [], 5.0)  # readable once it has exited
    finally:
        os.close(pidfd)

