"""A small blocking D-Bus connection over a unix socket, with a deadline on every step.

jeepney parses and serializes; this module only moves bytes. Connect, authentication, each
call and each wait have a bound, so an absent, dead, slow or hung bus ends in a one-line
PyoukiError instead of a hang.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pyouki.dbus_native.address import Endpoint, host_uid
from pyouki.errors import PyoukiError

if TYPE_CHECKING:
    from jeepney import Message

DEFAULT_TIMEOUT = 5.0
# Signals we did not wait for yet are kept, but not without bound (a chatty bus).
_MAX_PENDING = 1024


class DBusError(PyoukiError):
    """An error reply from the peer; ``name`` is the D-Bus error name (``org.freedesktop...``)."""

    def __init__(self, name: str, message: str, text: str) -> None:
        self.name = name
        self.dbus_message = message
        super().__init__(text)


class _Timeout(Exception):
    pass


def _strerror(e: OSError) -> str:
    """``connection refused`` rather than ``[Errno 111] Connection refused``."""
    if isinstance(e, TimeoutError) and not e.errno:
        return "timed out"
    text = os.strerror(e.errno) if e.errno else (e.strerror or str(e))
    return text[:1].lower() + text[1:]


class Connection:
    """One authenticated connection to a bus daemon or to systemd's private socket."""

    def __init__(self, sock: socket.socket, endpoint: Endpoint, what: str) -> None:
        from jeepney import Parser

        self.sock = sock
        self.endpoint = endpoint
        self.what = what
        self.unique_name = ""
        self._parser = Parser()
        self._serial = 0
        self._pending: deque[Message] = deque(maxlen=_MAX_PENDING)

    @property
    def peer_to_peer(self) -> bool:
        """True on systemd's private socket: no bus daemon, no Hello, no AddMatch."""
        return self.endpoint.peer_to_peer

    def describe(self) -> str:
        """``the systemd user manager at unix:path=...``, for error messages."""
        return f"{self.what} at {self.endpoint.address}"

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- low level -------------------------------------------------------------------------

    def _remaining(self, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Timeout()
        return left

    def _send_bytes(self, data: bytes, deadline: float) -> None:
        self.sock.settimeout(self._remaining(deadline))
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise _Timeout() from None

    def _recv_bytes(self, deadline: float) -> bytes:
        self.sock.settimeout(self._remaining(deadline))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise _Timeout() from None
        if not data:
            raise ConnectionResetError(0, "connection closed by peer")
        return data

    def _authenticate(self, deadline: float) -> bytes:
        """SASL EXTERNAL with the host uid; returns bytes the server sent after its OK line.

        BEGIN is pipelined with AUTH, as sd-bus clients do, so the first message is always a
        separate write after OK: systemd 252's private socket does not process a message that
        arrives in the same read as BEGIN until more data comes (seen on Debian 12), and the
        call would hang until its timeout.
        """
        uid_hex = str(host_uid()).encode().hex().encode()
        self._send_bytes(b"\0AUTH EXTERNAL " + uid_hex + b"\r\nBEGIN\r\n", deadline)
        buf = b""
        while b"\r\n" not in buf:
            buf += self._recv_bytes(deadline)
            if len(buf) > 4096:
                raise PyoukiError(f"failed to connect to {self.describe()}: authentication reply too long")
        line, _, rest = buf.partition(b"\r\n")
        if not line.startswith(b"OK"):
            reply = line.decode(errors="replace")
            raise PyoukiError(f"failed to connect to {self.describe()}: authentication as uid {host_uid()} "
                              f"rejected (server replied {reply!r})")
        return rest

    def send(self, msg: Message, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Send msg with the next serial; return that serial."""
        self._serial += 1
        try:
            self._send_bytes(msg.serialise(serial=self._serial), time.monotonic() + timeout)
        except _Timeout:
            raise PyoukiError(f"{self.describe()} did not accept a message within {timeout:g} s") from None
        except OSError as e:
            raise PyoukiError(f"lost the connection to {self.describe()}: {_strerror(e)}") from None
        return self._serial

    def _receive(self, deadline: float) -> Message:
        """The next message: from the parser's buffer, else from the socket."""
        while True:
            msg = self._parser.get_next_message()
            if msg is not None:
                return msg
            self._parser.add_data(self._recv_bytes(deadline))

    def call(self, msg: Message, timeout: float = DEFAULT_TIMEOUT) -> tuple[Any, ...]:
        """Send a method call and return the reply's body; an error reply raises DBusError.

        Signals that arrive meanwhile are kept for ``wait_for``.
        """
        from jeepney import HeaderFields, MessageType

        method = msg.header.fields.get(HeaderFields.member, "?")
        deadline = time.monotonic() + timeout
        serial = self.send(msg, timeout)
        try:
            while True:
                reply = self._receive(deadline)
                fields = reply.header.fields
                if fields.get(HeaderFields.reply_serial) != serial:
                    if reply.header.message_type == MessageType.signal:
                        self._pending.append(reply)
                    continue
                if reply.header.message_type == MessageType.error:
                    name = fields.get(HeaderFields.error_name, "unknown error")
                    text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
                    raise DBusError(name, text, f"{method} on {self.describe()} failed: {name}: {text}")
                return tuple(reply.body)
        except _Timeout:
            raise PyoukiError(f"{self.describe()} did not answer {method} within {timeout:g} s") from None
        except OSError as e:
            raise PyoukiError(f"lost the connection to {self.describe()} during {method}: "
                              f"{_strerror(e)}") from None

    def wait_for(self, predicate: Callable[[Message], bool], timeout: float, waiting_for: str) -> Message:
        """Return the first received (or already pending) signal for which predicate is true."""
        from jeepney import MessageType

        deadline = time.monotonic() + timeout
        for msg in list(self._pending):
            if predicate(msg):
                self._pending.remove(msg)
                return msg
        try:
            while True:
                msg = self._receive(deadline)
                if msg.header.message_type != MessageType.signal:
                    continue
                if predicate(msg):
                    return msg
                self._pending.append(msg)
        except _Timeout:
            raise PyoukiError(f"timed out after {timeout:g} s waiting for {waiting_for} "
                              f"from {self.describe()}") from None
        except OSError as e:
            raise PyoukiError(f"lost the connection to {self.describe()} while waiting for "
                              f"{waiting_for}: {_strerror(e)}") from None


def _open_one(endpoint: Endpoint, what: str, timeout: float) -> Connection:
    """Connect, authenticate and (on a bus) say Hello, all before one deadline."""
    from pyouki.dbus_native import messages

    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    conn = Connection(sock, endpoint, what)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(endpoint.sockaddr())
        except TimeoutError:
            raise _Timeout() from None
        conn._parser.add_data(conn._authenticate(deadline))
        if not endpoint.peer_to_peer:
            (conn.unique_name,) = conn.call(messages.hello(), max(deadline - time.monotonic(), 0.001))
    except _Timeout:
        conn.close()
        raise PyoukiError(f"failed to connect to {conn.describe()}: no answer within {timeout:g} s") from None
    except OSError as e:
        conn.close()
        raise PyoukiError(f"failed to connect to {conn.describe()}: {_strerror(e)}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def open_connection(endpoints: Sequence[Endpoint], what: str, timeout: float = DEFAULT_TIMEOUT) -> Connection:
    """Connect to the first endpoint that works, trying each in turn with its own timeout.

    So the whole attempt is bounded by ``len(endpoints) * timeout``. If none works, the error
    names the first endpoint's failure and lists the others.
    """
    if not endpoints:
        raise PyoukiError(f"failed to connect to {what}: no bus address "
                          "(DBUS_SESSION_BUS_ADDRESS and XDG_RUNTIME_DIR are unset)")
    errors: list[str] = []
    for endpoint in endpoints:
        try:
            return _open_one(endpoint, what, timeout)
        except PyoukiError as e:
            errors.append(str(e))
    first, rest = errors[0], [e.removeprefix(f"failed to connect to {what} at ") for e in errors[1:]]
    raise PyoukiError(first + (f" (also tried {'; '.join(rest)})" if rest else ""))
