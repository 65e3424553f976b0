"""Subordinate ids (/etc/subuid, /etc/subgid): reading a user's ranges and the command that adds one."""

from __future__ import annotations

SUBUID = "/etc/subuid"
SUBGID = "/etc/subgid"
DEFAULT_SIZE = 65536


def ranges(path: str, name: str, uid: int) -> list[tuple[int, int]]:
    """The (start, count) ranges of path for a user, named by name or uid, in file order."""
    found = []
    for owner, start, count in _entries(path):
        if owner in (name, str(uid)) and count > 0:
            found.append((start, count))
    return found


def free_start(path: str) -> int:
    """The first id above every range handed out in path, and at least 100000 (useradd's choice)."""
    start = 100000
    for _, first, count in _entries(path):
        start = max(start, first + count)
    return start


def usermod_fix(name: str, size: int = DEFAULT_SIZE) -> str:
    """The command that gives name a range in both files, each starting above what is taken."""
    uids, gids = free_start(SUBUID), free_start(SUBGID)
    return (f"usermod --add-subuids {uids}-{uids + size - 1} --add-subgids {gids}-{gids + size - 1} {name}")


def _entries(path: str) -> list[tuple[str, int, int]]:
    entries = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                    entries.append((parts[0], int(parts[1]), int(parts[2])))
    except OSError:
        pass
    return entries
