"""sd_notify passthrough: NOTIFY_SOCKET in pyouki's environment, as runc does it.

create bind-mounts a directory of the container's state dir at /run/notify and points the
process's NOTIFY_SOCKET at /run/notify/notify.sock. start binds that socket before it lets the
process run, waits for its READY=, and passes READY and MAINPID on to the caller's socket
(systemd's, for a `Type=notify` unit running pyouki).
"""

from __future__ import annotations

import os

from pyouki.errors import PyoukiError, reason

CONTAINER_DIR = "/run/notify"
SOCKET_NAME = "notify.sock"
HOST_DIR = "notify"  # inside the container's state directory


def requested() -> str:
    """The caller's NOTIFY_SOCKET, or ""."""
    return os.environ.get("NOTIFY_SOCKET", "")


def prepare(config: dict, state_dir: str) -> None:
    """Make the socket directory, add its bind mount and the env entry to config."""
    host_dir = os.path.join(state_dir, HOST_DIR)
    os.mkdir(host_dir, 0o755)
    os.chmod(host_dir, 0o755)
    config.setdefault("mounts", []).append({
        "destination": CONTAINER_DIR, "type": "bind", "source": host_dir,
        "options": ["bind", "nosuid", "noexec", "nodev", "ro"],
    })
    process = config["process"]
    env = [e for e in process.get("env") or [] if not e.startswith("NOTIFY_SOCKET=")]
    process["env"] = env + [f"NOTIFY_SOCKET={CONTAINER_DIR}/{SOCKET_NAME}"]


def bind(state_dir: str):  # type: ignore[no-untyped-def]
    """The datagram socket the container's process will write to (bound before it runs)."""
    import socket

    path = os.path.join(state_dir, HOST_DIR, SOCKET_NAME)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    # bound through /proc/self/fd/N: a state dir's path can be longer than sun_path's 108 bytes,
    # and a chdir would change the whole process's (the API caller's threads') working directory
    directory = -1
    try:
        directory = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        sock.bind(f"/proc/self/fd/{directory}/{SOCKET_NAME}")
    except OSError as e:
        sock.close()
        raise PyoukiError(f"failed to bind the notify socket {path}: {reason(e)}") from None
    finally:
        if directory >= 0:
            os.close(directory)
    os.chmod(path, 0o777)  # the container's user may be any uid
    return sock


def forward_ready(sock, pid: int, target: str) -> None:  # type: ignore[no-untyped-def]
    """Wait for READY= from the container (or its init's exit), then tell target READY and MAINPID."""
    import select
    import socket

    pidfd = os.pidfd_open(pid)
    try:
        while True:
            ready, _, _ = select.select([sock, pidfd], [], [])
            if sock in ready:
                data = sock.recv(65536)
                lines = [line for line in data.split(b"\n") if line.startswith(b"READY=")]
                if lines:
                    break
            elif pidfd in ready:
                return  # the container ended without becoming ready; nothing to forward
    finally:
        os.close(pidfd)
        sock.close()
    address = "\0" + target[1:] if target.startswith("@") else target
    out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        out.connect(address)
        out.send(lines[0] + b"\n" + f"MAINPID={pid}\n".encode())
    except OSError as e:
        raise PyoukiError(f"failed to notify {target}: {reason(e)}") from None
    finally:
        out.close()
