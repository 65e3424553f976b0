"""Idmapped bind mounts: the `idmap`/`ridmap` mount options and per-mount `uidMappings`/`gidMappings`.

The kernel creates an idmapped mount only for a process privileged over the source's filesystem
(CAP_SYS_ADMIN in its superblock's user namespace, the host's for a host directory) and only on a
detached mount. The container's init, inside its user namespace, has neither, so the runtime
prepares them before forking, as runc and crun do: open_tree(OPEN_TREE_CLONE) copies the source's
mount, mount_setattr(MOUNT_ATTR_IDMAP) maps it through a user namespace carrying the mapping, and
init, which inherits the fd, moves it onto the destination it opened inside the rootfs
(`mounts.mount_one`): no container path is ever resolved on the host.

Direction, as in the spec and crun: `{containerID: 1234, hostID: 0}` shows a file owned by 1234 on
disk as owned by 0 at the destination. Without per-mount mappings the container's own user
namespace mapping is used, so host ids appear inside the container as they are on disk.
"""

from __future__ import annotations

import os

from pyouki import syscalls as sc
from pyouki.errors import ConfigError, PyoukiError, reason

OPTIONS = ("idmap", "ridmap")

# mounts[i] -> the detached idmapped mount prepared for it, inherited by init across fork
PREPARED: dict[str, int] = {}


def wanted(entry: dict) -> bool:
    """True when a config.mounts entry asks for an idmapped mount (an option or mappings)."""
    return any(o in OPTIONS for o in entry.get("options") or []) or "uidMappings" in entry \
        or "gidMappings" in entry


def _mappings(entry: dict, key: str, field: str) -> list[dict]:
    maps = entry.get(key)
    if not isinstance(maps, list) or not maps:
        raise ConfigError(f"{field}.{key}", "must be a non-empty array of mappings")
    for i, m in enumerate(maps):
        if not isinstance(m, dict):
            raise ConfigError(f"{field}.{key}[{i}]", "must be an object")
        for k in ("containerID", "hostID", "size"):
            v = m.get(k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > 0xFFFFFFFF:
                raise ConfigError(f"{field}.{key}[{i}].{k}", "must be an unsigned 32-bit integer")
    return maps


def plan(config: dict, field: str, entry: dict) -> tuple[list[dict], list[dict], str | None, bool]:
    """Validate one entry: (uid maps, gid maps, user namespace path to map through, recursive).

    Per-mount mappings win; without them the container's user namespace decides: its mappings
    when the runtime creates it, the namespace itself when it is joined by path. The spec's
    errors: mappings given half, or no mapping anywhere (no user namespace).
    """
    options = entry.get("options") or []
    recursive = "ridmap" in options
    if "rbind" not in options and "bind" not in options and entry.get("type") != "bind":
        raise ConfigError(f"{field}.options", "idmapped mounts are only supported on bind mounts")
    has_uid, has_gid = "uidMappings" in entry, "gidMappings" in entry
    if has_uid != has_gid:
        missing = "gidMappings" if has_uid else "uidMappings"
        raise ConfigError(f"{field}.{missing}", "is required with "
                          f"{'uidMappings' if has_uid else 'gidMappings'} (the spec asks for both)")
    if has_uid:
        return _mappings(entry, "uidMappings", field), _mappings(entry, "gidMappings", field), None, recursive
    linux = config.get("linux") or {}
    for ns in linux.get("namespaces") or []:
        if isinstance(ns, dict) and ns.get("type") == "user":
            if ns.get("path"):
                return [], [], ns["path"], recursive
            return linux.get("uidMappings") or [], linux.get("gidMappings") or [], None, recursive
    raise ConfigError(f"{field}.options", "idmap needs uidMappings and gidMappings on the mount, "
                      "or a user namespace whose mapping it uses")


def clone_propagation(config: dict) -> int:
    """The propagation of a detached clone of a host mount, set before init attaches it: a clone of
    a shared mount is its peer, and what the container mounts under it would reach the host; as a
    slave (private with a private rootfsPropagation) it is what a bind in init's copy would be."""
    linux = config.get("linux") or {}
    private = (linux.get("rootfsPropagation") or "rslave") in ("private", "rprivate")
    return sc.MS_PRIVATE if private else sc.MS_SLAVE


def prepare(config: dict, bundle: str) -> None:
    """Create the detached idmapped mounts the config asks for (before the fork; see the module doc).

    Fills PREPARED; close_all() releases the runtime's copies once init has its own.
    """
    namespaces: dict[tuple[str, str], int] = {}  # one user namespace per distinct mapping
    try:
        for i, entry in enumerate(config.get("mounts") or []):
            if not isinstance(entry, dict) or not wanted(entry):
                continue
            field = f"mounts[{i}]"
            uid_maps, gid_maps, ns_path, recursive = plan(config, field, entry)
            if os.geteuid() != 0:
                raise PyoukiError(f"{field}.options: idmapped mounts need root: the kernel lets only a process "
                                  "privileged over the source's filesystem create them")
            source = entry.get("source") or ""
            if not os.path.isabs(source):
                source = os.path.join(bundle, source)
            if ns_path:
                key = ("path", ns_path)
            else:
                from pyouki.userns.idmap import format_map

                key = (format_map(uid_maps), format_map(gid_maps))
            if key not in namespaces:
                namespaces[key] = _open_userns(ns_path, uid_maps, gid_maps, field)
            rbind = "rbind" in (entry.get("options") or [])
            PREPARED[field] = fd = _idmapped_tree(source, namespaces[key], recursive, rbind, field)
            try:
                sc.mount_setattr_fd(fd, propagation=clone_propagation(config), recursive=rbind)
            except OSError as e:
                raise PyoukiError(f"{field}: failed to set the propagation of the mount of {source}: "
                                  f"{reason(e)}") from None
    except BaseException:
        close_all()
        raise
    finally:
        for fd in namespaces.values():
            os.close(fd)


def _idmapped_tree(source: str, userns_fd: int, recursive: bool, rbind: bool, field: str) -> int:
    try:
        fd = sc.open_tree_clone(source, rbind)
    except OSError as e:
        raise PyoukiError(f"{field}.source: failed to open {source} for an idmapped mount: "
                          f"{reason(e)}") from None
    try:
        sc.mount_setattr_idmap(fd, userns_fd, recursive)
    except OSError as e:
        os.close(fd)
        hint = " (the filesystem of the source does not support idmapped mounts)" if e.errno == 22 else ""
        raise PyoukiError(f"{field}: failed to idmap the mount of {source}: {reason(e)}"
                          f"{hint}") from None
    return fd


def _open_userns(path: str | None, uid_maps: list[dict], gid_maps: list[dict], field: str) -> int:
    """A user namespace fd: the one at path, or a new one carrying the mappings.

    A new one belongs to a short-lived child that unshares CLONE_NEWUSER and waits while we (root)
    write its maps and open /proc/<child>/ns/user; the fd keeps the namespace alive after it exits.
    """
    if path:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise PyoukiError(f"{field}.options: failed to open the user namespace {path}: "
                              f"{reason(e)}") from None
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    done_r, done_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(done_w)
            sc.unshare(sc.CLONE_NEWUSER)
            os.write(ready_w, b"1")
            os.read(done_r, 1)  # until the parent has opened the namespace (or gone)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise PyoukiError(f"{field}: failed to create a user namespace for the idmapped mount")
        from pyouki.userns.idmap import format_map

        for name, maps, key in (("uid_map", uid_maps, "uidMappings"), ("gid_map", gid_maps, "gidMappings")):
            try:
                with open(f"/proc/{pid}/{name}", "w") as f:
                    f.write(format_map(maps))
            except OSError as e:
                raise PyoukiError(f"{field}.{key}: failed to map the ids for the idmapped mount: "
                                  f"{reason(e)}") from None
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(done_w)
        os.waitpid(pid, 0)


def attach(field: str, target_fd: int) -> bool:
    """Move the idmapped mount prepared for field onto target_fd's file; False when none was."""
    return attach_prepared(PREPARED, field, target_fd)


def close_all() -> None:
    """Release the prepared mounts (the runtime's copies once init has been forked, or on failure)."""
    close_prepared(PREPARED)


def attach_prepared(prepared: dict[str, int], field: str, target_fd: int) -> bool:
    """Move the detached mount prepared for field (idmapped, or a bind source's clone) onto
    target_fd's file, and close it; False when none was prepared."""
    fd = prepared.pop(field, -1)
    if fd < 0:
        return False
    try:
        sc.move_mount_fd(fd, target_fd)
    finally:
        os.close(fd)
    return True


def close_prepared(prepared: dict[str, int]) -> None:
    """Close every detached mount left in prepared."""
    while prepared:
        os.close(prepared.popitem()[1])
