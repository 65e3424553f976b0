"""Terminals: the container's pty, and its master handed to the caller.

Init opens a pty from the container's own devpts (after pivot_root, so /dev/ptmx is the
container's), makes the slave its controlling terminal and stdio, and sends the master back over
a socketpair with SCM_RIGHTS. The parent then passes it to --console-socket (as runc does, so
conmon and the containerd shim accept it) or, for a foreground `run`, relays it to its own
terminal. Imported only when process.terminal is true: socket, termios and fcntl cost ~8 ms.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios

from pyouki.errors import PyoukiError, reason


def socketpair() -> tuple[socket.socket, socket.socket]:
    """The (parent, child) pair the master travels over."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def setup_in_container(sock: socket.socket, size: dict | None, uid: int) -> None:
    """In init, after pivot_root: a pty as controlling terminal and stdio; send the master out.

    The slave is given to the process's uid only: like runc, its group stays the one devpts gave
    it (gid=5, tty), so the user's own group cannot write to the terminal, and `mesg`/`write`
    work as on a host."""
    try:
        master, slave = os.openpty()
    except OSError as e:
        raise PyoukiError(f"process.terminal: failed to open a pty in the container: {reason(e)}") from None
    try:
        name = os.ttyname(slave)
        os.fchown(slave, uid, -1)
        if size:
            set_size(slave, int(size.get("height", 0)), int(size.get("width", 0)))
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        socket.send_fds(sock, [name.encode()], [master])
    except OSError as e:
        raise PyoukiError(f"process.terminal: failed to set up the container's terminal: {reason(e)}") from None
    finally:
        os.close(master)
        if slave > 2:
            os.close(slave)
        sock.close()


def set_size(fd: int, rows: int, cols: int) -> None:
    """TIOCSWINSZ: the window size of the terminal on fd."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def receive_master(sock: socket.socket) -> int:
    """The master fd init sent."""
    _, fds, _, _ = socket.recv_fds(sock, 4096, 1)
    if not fds:
        raise PyoukiError("process.terminal: the container did not send its terminal")
    os.set_inheritable(fds[0], False)
    return fds[0]


def send_to_console_socket(path: str, master: int) -> None:
    """Hand the master to the engine's --console-socket, with the pty name as payload like runc."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        socket.send_fds(conn, [b"/dev/ptmx"], [master])
    except OSError as e:
        raise PyoukiError(f"--console-socket: failed to send the terminal to {path}: {reason(e)}") from None
    finally:
        conn.close()


def inherit_size(master: int) -> None:
    """Give the container's terminal the size of ours (before it starts, so it sees it at once)."""
    if os.isatty(0):
        try:
            rows, cols = struct.unpack("HHHH", fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8))[:2]
            set_size(master, rows, cols)
        except OSError:
            pass


def relay(master: int) -> None:
    """Copy between our stdin/stdout and the container's terminal until the container closes it."""
    import select
    import signal
    import tty

    stdin_tty = os.isatty(0)
    saved = termios.tcgetattr(0) if stdin_tty else None

    if stdin_tty:
        tty.setraw(0)
        signal.signal(signal.SIGWINCH, lambda _s, _f: inherit_size(master))
    inputs = [master, 0]
    try:
        while True:
            try:
                ready, _, _ = select.select(inputs, [], [])
            except InterruptedError:
                continue
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every slave fd is closed, the container is done
                    break
                if not data:
                    break
                os.write(1, data)
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    os.write(master, data)
                else:
                    inputs.remove(0)
                    os.write(master, b"\x04")  # our stdin ended: send EOF to the container
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        os.close(master)
