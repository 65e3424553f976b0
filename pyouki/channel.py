"""The sync channel between `pyouki create` and the processes it forks.

Two pipes (one each way) carrying one-line messages, `VERB [ARG]\n`; a write of one message is
atomic (shorter than PIPE_BUF), so the intermediate process and init can share the writing end.
Errors inside a child travel back as `error MESSAGE`, never as bare exit codes.
"""

from __future__ import annotations

import os


class Channel:
    """One direction of messages over a pipe."""

    def __init__(self, read_fd: int = -1, write_fd: int = -1) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self._buffer = b""

    def send(self, verb: str, arg: str = "") -> None:
        line = f"{verb} {arg}".rstrip(" ").replace("\n", " ") + "\n"
        os.write(self.write_fd, line.encode()[:4000])

    def receive(self) -> tuple[str, str]:
        """The next message as (verb, arg); ("eof", "") when every writer has gone."""
        while b"\n" not in self._buffer:
            chunk = os.read(self.read_fd, 4096)
            if not chunk:
                return "eof", ""
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        verb, _, arg = line.decode(errors="replace").partition(" ")
        return verb, arg

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.read_fd = self.write_fd = -1


def pipe_pair() -> tuple[Channel, Channel, Channel, Channel]:
    """(parent's reader, parent's writer, child's reader, child's writer), all close-on-exec."""
    up_r, up_w = os.pipe2(os.O_CLOEXEC)
    down_r, down_w = os.pipe2(os.O_CLOEXEC)
    return Channel(read_fd=up_r), Channel(write_fd=down_w), Channel(read_fd=down_r), Channel(write_fd=up_w)
