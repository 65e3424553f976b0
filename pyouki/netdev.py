"""`linux.netDevices`: move host network devices into the container's network namespace.

The runtime (the `create` parent, in the host's network namespace) moves each device into
init's network namespace once init exists, renamed as configured in the same netlink request
(so a name taken on either side never gets in the way), then re-adds the addresses the spec
says to keep (a link loses its addresses when it changes namespace: the permanent ones of
global scope, any family) and sets it up, before the create-time hooks run.

Deletion follows the spec: the runtime does not move a device out of the namespace; when the
container's own network namespace dies, the kernel moves physical devices back to the initial
namespace (under their container names) and destroys virtual ones (veth, bridge...), and a
namespace joined by path keeps them. A *failed* create is different: the container never
existed, so the devices already moved go back, under their own names and with their addresses.

pyroute2 costs ~150 ms to import: only this module imports it, and only for a config with
netDevices (`check` needs no netlink).
"""

from __future__ import annotations

import os

from pyouki.errors import ConfigError, PyoukiError, reason

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FIELD = "linux.netDevices"
IFNAMSIZ = 16
IFA_F_PERMANENT = 0x80
RT_SCOPE_UNIVERSE = 0
IFF_UP = 0x1
# the address flags userspace may set with RTM_NEWADDR (the others are the kernel's state)
_SETTABLE_IFA_FLAGS = 0x02 | 0x10 | 0x100 | 0x200 | 0x400  # NODAD HOMEADDRESS MANAGETEMPADDR NOPREFIXROUTE MCAUTOJOIN


def _valid_ifname(name: str) -> str | None:
    """Why name is not a valid interface name (dev_valid_name() plus one %d template), or None."""
    if not name:
        return "must not be empty"
    if len(name.encode()) >= IFNAMSIZ:
        return f"{name!r} is longer than {IFNAMSIZ - 1} bytes"
    if name in (".", "..") or any(ch in name for ch in "/:") or any(ch.isspace() for ch in name):
        return f"{name!r} is not a valid interface name"
    if "%" in name and (name.count("%") != 1 or "%d" not in name):
        return f"{name!r}: the only template the kernel knows is one %d"
    return None


def check(config: dict, namespaces: dict[str, str | None], rootless: bool) -> dict[str, str]:
    """Check linux.netDevices without netlink; return {host name: name in the container}.

    Refused: a rootless runtime (moving a device needs CAP_NET_ADMIN in the host's network
    namespace), a container without a network namespace of its own (the devices would stay in
    the runtime's), bad names, two devices given the same name, a device missing on the host.
    """
    devices = (config.get("linux") or {}).get("netDevices")
    if devices is None:
        return {}
    if not isinstance(devices, dict):
        raise ConfigError(FIELD, "must be an object")
    if not devices:
        return {}
    if rootless:
        raise ConfigError(FIELD, "moving network devices needs root (CAP_NET_ADMIN in the host's network "
                                 "namespace): a rootless container cannot have them")
    if "network" not in namespaces:
        raise ConfigError(FIELD, "the container has no network namespace of its own: the devices would stay "
                                 "in the runtime's (add a network namespace to linux.namespaces)")
    path = namespaces["network"]
    if path is not None and _same_netns(path, "/proc/self/ns/net"):
        raise ConfigError(FIELD, f"the network namespace joined at {path} is the runtime's own: "
                                 f"the devices would not move")
    moves: dict[str, str] = {}
    taken: dict[str, str] = {}
    import socket

    for host_name, entry in devices.items():
        field = f"{FIELD}.{host_name}"
        if not isinstance(entry, dict):
            raise ConfigError(field, "must be an object")
        why = _valid_ifname(host_name)
        if why is not None or "%" in host_name:
            raise ConfigError(field, why or f"{host_name!r} is not a device name")
        name = entry.get("name")
        if name is None or name == "":
            name = host_name
        elif not isinstance(name, str):
            raise ConfigError(f"{field}.name", "must be a string")
        else:
            why = _valid_ifname(name)
            if why is not None:
                raise ConfigError(f"{field}.name", why)
        if "%" not in name:
            if name in taken:
                raise ConfigError(field, f"{name!r} is also the container name of {FIELD}.{taken[name]}")
            taken[name] = host_name
        try:
            socket.if_nametoindex(host_name)
        except OSError:
            raise ConfigError(field, "no such network device in the runtime's network namespace") from None
        moves[host_name] = name
    return moves


def _same_netns(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False  # joining it fails later, naming the path
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _ipr_in(netns_fd: int) -> Any:
    """An IPRoute whose netlink socket lives in the network namespace of netns_fd.

    A socket belongs to the namespace it was created in: enter it for the socket() call only,
    then come back (this process is single-threaded; pyroute2's own netns support forks).
    """
    import socket

    from pyroute2 import IPRoute

    from pyouki import syscalls

    own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        syscalls.setns(netns_fd, syscalls.CLONE_NEWNET)
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        finally:
            syscalls.setns(own, syscalls.CLONE_NEWNET)
    finally:
        os.close(own)
    return IPRoute(fileno=sock.detach())


def _kept_addresses(ipr: Any, index: int) -> list[dict]:
    """The addresses the spec keeps across the move: permanent, global scope, any family."""
    kept = []
    for msg in ipr.get_addr(index=index):
        flags = msg.get_attr("IFA_FLAGS")
        if flags is None:
            flags = msg["flags"]
        if not flags & IFA_F_PERMANENT or msg["scope"] != RT_SCOPE_UNIVERSE:
            continue
        addr: dict = {"family": msg["family"], "prefixlen": msg["prefixlen"], "flags": flags & _SETTABLE_IFA_FLAGS}
        for attr, key in (("IFA_ADDRESS", "address"), ("IFA_LOCAL", "local"), ("IFA_BROADCAST", "broadcast")):
            value = msg.get_attr(attr)
            if value is not None:
                addr[key] = value
        kept.append(addr)
    return kept


def _netlink_reason(e: BaseException) -> str:
    code = getattr(e, "code", None)
    if isinstance(code, int) and code > 0:
        return os.strerror(code).lower()
    return str(e).lower()


class Moved:
    """One device moved into the container: enough to put it back as it was."""

    def __init__(self, host_name: str, name: str, index: int, up: bool, addresses: list[dict]) -> None:
        self.host_name = host_name
        self.name = name  # in the container (a %d template resolved)
        self.index = index  # in the container
        self.up = up
        self.addresses = addresses


class NetDevices:
    """The devices a create moves; `restore` puts them back when that create fails."""

    def __init__(self, moves: dict[str, str]) -> None:
        self.moves = moves
        self.moved: list[Moved] = []
        self.netns_fd = -1

    def move_into(self, pid: int) -> None:
        """Move every device into the network namespace of pid, renamed, addresses kept, up.

        Before anything moves, every target name is checked against the devices already in that
        namespace (a joined one may hold any; a new one has lo and the tunnels' fallbacks).
        """
        try:
            self.netns_fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise PyoukiError(f"{FIELD}: failed to open the container's network namespace: "
                              f"{reason(e)}") from None
        from pyroute2 import IPRoute

        with IPRoute() as host, _ipr_in(self.netns_fd) as inside:
            present = {link.get_attr("IFLA_IFNAME") for link in inside.get_links()}
            for host_name, name in self.moves.items():
                if "%" not in name and name in present:
                    raise ConfigError(f"{FIELD}.{host_name}", f"a device named {name!r} already exists in "
                                                              f"the container's network namespace")
            for host_name, name in self.moves.items():
                self._move_one(host, inside, host_name, name)

    def _move_one(self, host: Any, inside: Any, host_name: str, name: str) -> None:
        field = f"{FIELD}.{host_name}"
        found = host.link_lookup(ifname=host_name)
        if not found:
            raise ConfigError(field, "no such network device in the runtime's network namespace")
        index = found[0]
        try:
            link = host.get_links(index)[0]
            up = bool(link["flags"] & IFF_UP)
            addresses = _kept_addresses(host, index)
            before = {lk["index"] for lk in inside.get_links()}
            host.link("set", index=index, state="down")
            # move and rename in one request: the kernel checks the new name in the target only
            try:
                host.link("set", index=index, net_ns_fd=self.netns_fd, ifname=name)
            except Exception:
                if up:
                    host.link("set", index=index, state="up")
                raise
        except Exception as e:  # noqa: BLE001 - pyroute2's NetlinkError and socket errors
            reason = _netlink_reason(e)
            if getattr(e, "code", None) == 22:  # EINVAL: NETIF_F_NETNS_LOCAL
                reason += " (the kernel keeps some kinds of device, e.g. bridges and lo, in their namespace)"
            raise PyoukiError(f"{field}: failed to move it into the container: {reason}") from None
        moved = Moved(host_name, name, index, up, addresses)
        self.moved.append(moved)
        try:
            new = [lk for lk in inside.get_links() if lk["index"] not in before]
            if len(new) != 1:
                raise PyoukiError(f"{field}: moved, but not found in the container's network namespace")
            moved.index = new[0]["index"]
            moved.name = new[0].get_attr("IFLA_IFNAME")
            _add_addresses(inside, moved.index, addresses, field)
            inside.link("set", index=moved.index, state="up")  # the spec's MUST, whatever it was before
        except PyoukiError:
            raise
        except Exception as e:  # noqa: BLE001
            raise PyoukiError(f"{field}: failed to set it up in the container: {_netlink_reason(e)}") from None

    def restore(self) -> None:
        """Move the devices moved so far back to the runtime's namespace as they were (failed create).

        Best effort, last moved first: the container is being torn down and its namespace with
        it, which would destroy a virtual device left inside.
        """
        if not self.moved:
            self.close()
            return
        from pyroute2 import IPRoute

        from pyouki import log

        own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            with IPRoute() as host, _ipr_in(self.netns_fd) as inside:
                for moved in reversed(self.moved):
                    try:
                        inside.link("set", index=moved.index, state="down")
                        inside.link("set", index=moved.index, net_ns_fd=own, ifname=moved.host_name)
                        index = host.link_lookup(ifname=moved.host_name)[0]
                        _add_addresses(host, index, moved.addresses, f"{FIELD}.{moved.host_name}")
                        if moved.up:
                            host.link("set", index=index, state="up")
                    except Exception as e:  # noqa: BLE001 - report and go on with the others
                        log.warning(f"{FIELD}.{moved.host_name}: failed to move it back: {_netlink_reason(e)}")
        finally:
            os.close(own)
            self.moved = []
            self.close()

    def close(self) -> None:
        """Drop the namespace fd."""
        if self.netns_fd >= 0:
            os.close(self.netns_fd)
            self.netns_fd = -1


def _add_addresses(ipr: Any, index: int, addresses: list[dict], field: str) -> None:
    for addr in addresses:
        try:
            ipr.addr("add", index=index, **addr)
        except Exception as e:  # noqa: BLE001
            if getattr(e, "code", None) == 17:  # EEXIST: already there (e.g. kept by the kernel)
                continue
            raise PyoukiError(f"{field}: failed to add address {addr.get('address')}/{addr['prefixlen']}: "
                              f"{_netlink_reason(e)}") from None
