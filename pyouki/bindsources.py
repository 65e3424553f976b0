"""Bind sources opened by the runtime, before the fork, for a container with a new user namespace.

Init mounts from inside the container's user namespace, where root is an unprivileged host id: a
source under a directory only the host's root can search (0700 root) would not exist for it,
though the runtime could reach it. runc opens bind sources before entering the user namespace;
here the runtime clones each source's mount (open_tree(OPEN_TREE_CLONE): a detached copy, the
only kind that can cross into init's new mount namespace, an O_PATH fd cannot) and init moves it
onto the destination it opened inside the rootfs (`mounts.mount_one`), as with idmapped mounts:
no container path is ever resolved on the host.

The clone of a shared host mount would be a peer of it; it is made a slave before the fork
(`idmapmount.clone_propagation`), as a bind in init's rslave copy of the host would be.
"""

from __future__ import annotations

import os
import stat

from pyouki import idmapmount
from pyouki import syscalls as sc
from pyouki.errors import PyoukiError, reason

# mounts[i] -> detached clone of its source, inherited by init; and whether that source is a directory
PREPARED: dict[str, int] = {}
IS_DIR: dict[str, bool] = {}


def prepare(config: dict, bundle: str) -> None:
    """Clone the source mount of every plain bind mount of config (idmapped ones are idmapmount's)."""
    propagation = idmapmount.clone_propagation(config)
    try:
        for i, entry in enumerate(config.get("mounts") or []):
            options = entry.get("options") or []
            if entry.get("type") != "bind" and "bind" not in options and "rbind" not in options:
                continue
            if idmapmount.wanted(entry):
                continue
            field = f"mounts[{i}]"
            source = os.path.join(bundle, entry.get("source") or "")  # an absolute source stays as it is
            try:
                is_dir = stat.S_ISDIR(os.stat(source).st_mode)
            except FileNotFoundError:
                raise PyoukiError(f"{field}.source: bind source {source} does not exist") from None
            except OSError as e:
                raise PyoukiError(f"{field}.source: cannot reach {source}: {reason(e)}") from None
            recursive = "rbind" in options
            try:
                fd = sc.open_tree_clone(source, recursive)
            except OSError as e:
                raise PyoukiError(f"{field}.source: failed to open {source}: "
                                  f"{reason(e)}") from None
            PREPARED[field] = fd
            IS_DIR[field] = is_dir
            try:
                sc.mount_setattr_fd(fd, propagation=propagation, recursive=recursive)
            except OSError as e:
                raise PyoukiError(f"{field}: failed to set the propagation of the clone of {source}: "
                                  f"{reason(e)}") from None
    except BaseException:
        close_all()
        raise


def source_is_dir(field: str) -> bool | None:
    """Whether the prepared source of field is a directory; None when none was prepared."""
    return IS_DIR.get(field) if field in PREPARED else None


def attach(field: str, target_fd: int) -> bool:
    """Move the clone prepared for field onto target_fd's file; False when none was."""
    return idmapmount.attach_prepared(PREPARED, field, target_fd)


def close_all() -> None:
    """Release the clones (the runtime's copies once init has been forked, or on failure)."""
    idmapmount.close_prepared(PREPARED)
    IS_DIR.clear()
