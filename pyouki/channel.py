"""The sync channel between a pyouki command and the processes it forks, and the fork itself.

Two pipes (one each way) carrying typed, length-prefixed messages: `send(verb, arg)` and
`receive() -> (verb, arg)`, where the verb is one of VERBS and arg any text (newlines and all).
On the wire a message is one or more frames of at most PIPE_BUF bytes:

    type (1 byte, VERBS index + 1) | flags (1 byte, MORE when another frame follows) |
    length (2 bytes, big-endian) | payload (UTF-8, at most PIPE_BUF - 4 bytes)

Each frame goes out in one write(2) of at most PIPE_BUF bytes, which the kernel keeps whole, so
two processes may share a writing end (the intermediate process and init do). A long message
is reassembled per type: two writers never send the same verb at the same time (only init
sends `ready`/`hooks`/`seccomp`, only the intermediate `map`/`pid`; `error` comes from the one
whose turn it is, and the other one is waiting).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (2 ms)
if TYPE_CHECKING:
    from collections.abc import Callable

# the message types; append only (the code is the index + 1, shared by both ends of one fork)
VERBS = ("map", "mapped", "pid", "ready", "hooks", "continue", "abort", "error", "go", "created", "seccomp")
_CODES = {verb: i + 1 for i, verb in enumerate(VERBS)}
PIPE_BUF = 4096
_HEADER = 4
_MAX_PAYLOAD = PIPE_BUF - _HEADER
_MORE = 1


class Channel:
    """One direction of messages over a pipe."""

    def __init__(self, read_fd: int = -1, write_fd: int = -1) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self._buffer = b""
        self._partial: dict[int, bytes] = {}

    def send(self, verb: str, arg: str = "") -> None:
        """Send one message; raises OSError (EPIPE) when the reader has gone."""
        code = _CODES[verb]  # KeyError: a verb missing from VERBS is a bug of the caller
        payload = arg.encode(errors="surrogateescape")
        while True:
            chunk, payload = payload[:_MAX_PAYLOAD], payload[_MAX_PAYLOAD:]
            flags = _MORE if payload else 0
            frame = bytes((code, flags)) + len(chunk).to_bytes(2, "big") + chunk
            os.write(self.write_fd, frame)  # <= PIPE_BUF: written whole, never interleaved
            if not payload:
                return

    def receive(self) -> tuple[str, str]:
        """The next message as (verb, arg); ("eof", "") when every writer has gone."""
        while True:
            while len(self._buffer) < _HEADER or len(self._buffer) < _HEADER + _length(self._buffer):
                chunk = os.read(self.read_fd, 65536)
                if not chunk:
                    return "eof", ""  # a frame cut short is a writer that died: nothing more will come
                self._buffer += chunk
            code, flags = self._buffer[0], self._buffer[1]
            end = _HEADER + _length(self._buffer)
            payload, self._buffer = self._buffer[_HEADER:end], self._buffer[end:]
            payload = self._partial.pop(code, b"") + payload
            if flags & _MORE:
                self._partial[code] = payload
                continue
            if not 1 <= code <= len(VERBS):
                return "error", f"malformed message on the sync channel (type {code})"
            return VERBS[code - 1], payload.decode(errors="replace")

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.read_fd = self.write_fd = -1


def _length(buffer: bytes) -> int:
    return int.from_bytes(buffer[2:4], "big")


def pipe_pair() -> tuple[Channel, Channel, Channel, Channel]:
    """(parent's reader, parent's writer, child's reader, child's writer), all close-on-exec."""
    up_r, up_w = os.pipe2(os.O_CLOEXEC)
    down_r, down_w = os.pipe2(os.O_CLOEXEC)
    return Channel(read_fd=up_r), Channel(write_fd=down_w), Channel(read_fd=down_r), Channel(write_fd=up_w)


def fork_child(body: Callable[..., object], *args: object) -> int:
    """os.fork(); the child runs body(*args) and ends in os._exit on every path.

    Whatever body raises (an error while reporting an error, a KeyboardInterrupt, SystemExit),
    the child never unwinds into the caller's frames: those belong to the parent's command and
    would run its clean-up, or print its traceback, a second time. body reports its own errors
    over its channel; exit status 1 is all that is left when even that fails.
    """
    pid = os.fork()
    if pid:
        return pid
    try:
        body(*args)
    finally:
        os._exit(1)
