"""Seccomp user notification (`SCMP_ACT_NOTIFY`): handing the listener fd to the seccomp agent.

The filter is loaded by the container's process (init, or the process of `exec`) with
SECCOMP_FILTER_FLAG_NEW_LISTENER, which returns the listener fd. That process hands it at once to
the runtime over a socketpair made before the fork (`Handover.send`: sendmsg with SCM_RIGHTS,
then a `seccomp` message of pyouki.channel on the sync pipe; `write` and `sendmsg` may not be
notified, see pyouki.seccomp), and the runtime, still on the host, connects to
`linux.seccomp.listenerPath` and sends the container process state of runtime-spec
config-linux.md: one JSON document with the fd in the same sendmsg (SCM_RIGHTS), one connection
per state, closed after it.

Until the agent has the fd, a notified syscall of the container's process waits, so the runtime
forwards it as soon as the message arrives, whatever else it is waiting for.
"""

from __future__ import annotations

import json
import os
import socket

from pyouki.channel import Channel
from pyouki.errors import PyoukiError, reason

FD_NAME = "seccompFd"


class Handover:
    """The way from the process that loads the filter to the runtime that forwards its fd."""

    def __init__(self, signal_fd: int) -> None:
        # both ends close-on-exec (Python's default): nothing of this reaches the container
        self.parent, self.child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.signal_fd = signal_fd  # the sync pipe's writing end, shared with the runtime's reader
        self.signal = Channel(write_fd=signal_fd)  # one frame, one write(2): nothing else to notify

    def send(self, fd: int) -> None:
        """In the container's process, just after seccomp(2) returned fd: pass it to the runtime.

        Only sendmsg and write happen before the runtime has it (closing comes after: `close`
        may be notified, and then waits for the agent, which by then has the fd).
        """
        try:
            socket.send_fds(self.child, [FD_NAME.encode()], [fd])
            self.signal.send("seccomp")
        except OSError as e:
            raise PyoukiError(f"linux.seccomp: failed to hand the listener fd to the runtime: "
                              f"{reason(e)} (the profile must allow sendmsg and write)") from None
        os.close(fd)
        self.child.close()

    def close_child_end(self) -> None:
        """In the runtime after the fork: the container's end is not ours."""
        self.child.close()

    def forward(self, seccomp: dict, pid: int, state: dict) -> None:
        """In the runtime, on the `seccomp` message: send the fd, the process's pid and the
        container's state to the listener."""
        try:
            _, fds, _, _ = socket.recv_fds(self.parent, 64, 1)
        except OSError as e:
            raise PyoukiError(f"linux.seccomp: failed to receive the seccomp listener fd: "
                              f"{reason(e)}") from None
        if not fds:
            raise PyoukiError("linux.seccomp: the container's process did not hand over its seccomp listener fd")
        try:
            send_to_listener(seccomp["listenerPath"], seccomp.get("listenerMetadata") or "", pid, state, fds[0])
        finally:
            for fd in fds:
                os.close(fd)

    def close(self) -> None:
        """Release both ends (the runtime, once the container's process is running or has failed)."""
        self.parent.close()
        self.child.close()


def process_state(pid: int, state: dict, metadata: str) -> dict:
    """The container process state of config-linux.md: process pid, container state `state`."""
    from pyouki import OCI_VERSION

    doc: dict = {"ociVersion": OCI_VERSION, "fds": [FD_NAME], "pid": pid}
    if metadata:
        doc["metadata"] = metadata
    doc["state"] = state
    return doc


def send_to_listener(path: str, metadata: str, pid: int, state: dict, fd: int) -> None:
    """Connect to the agent's socket and send the process state with fd, in one sendmsg."""
    payload = json.dumps(process_state(pid, state, metadata)).encode()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        sent = socket.send_fds(sock, [payload], [fd])
        sock.sendall(payload[sent:])  # the fd travelled with the first part (the spec's rule)
    except OSError as e:
        raise PyoukiError(f"linux.seccomp.listenerPath: failed to send the seccomp fd to {path}: "
                          f"{reason(e)}") from None
    finally:
        sock.close()
