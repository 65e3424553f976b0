"""The container process itself: its user, limits, environment and executable."""

from __future__ import annotations

import os

from pyouki.enginewords import EXEC_NOT_FOUND, NO_SUCH_FILE, PERMISSION_DENIED, exec_error
from pyouki.errors import ConfigError, PyoukiError, reason

RLIMITS = {
    "RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3, "RLIMIT_CORE": 4,
    "RLIMIT_RSS": 5, "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7, "RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9,
    "RLIMIT_LOCKS": 10, "RLIMIT_SIGPENDING": 11, "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13,
    "RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15,
}
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def set_rlimits(rlimits: list[dict]) -> None:
    """Apply process.rlimits (before dropping privileges: raising a hard limit needs them)."""
    import resource

    for i, rl in enumerate(rlimits):
        soft, hard = rl["soft"], rl["hard"]
        soft = resource.RLIM_INFINITY if soft >= 2**64 - 1 or soft < 0 else soft
        hard = resource.RLIM_INFINITY if hard >= 2**64 - 1 or hard < 0 else hard
        try:
            resource.setrlimit(RLIMITS[rl["type"]], (soft, hard))
        except (OSError, ValueError) as e:
            why = reason(e) if isinstance(e, OSError) else str(e)
            raise PyoukiError(f"process.rlimits[{i}]: failed to set {rl['type']} to {soft}:{hard}: {why}") from None


def set_user(user: dict, setgroups_allowed: bool) -> None:
    """Switch to process.user: supplementary groups, gid, then uid."""
    uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    groups = [int(g) for g in user.get("additionalGids") or []]
    if setgroups_allowed:
        try:
            os.setgroups(groups)
        except OSError as e:
            raise PyoukiError(f"process.user.additionalGids: failed to set groups {groups}: {reason(e)}") from None
    elif groups:
        raise ConfigError("process.user.additionalGids", "setgroups is denied in this user namespace "
                          "(map gids with newgidmap to allow it)")
    try:
        os.setresgid(gid, gid, gid)
    except OSError as e:
        raise PyoukiError(f"process.user.gid: failed to switch to gid {gid}: {reason(e)}") from None
    try:
        os.setresuid(uid, uid, uid)
    except OSError as e:
        raise PyoukiError(f"process.user.uid: failed to switch to uid {uid}: {reason(e)}") from None
    if user.get("umask") is not None:
        os.umask(int(user["umask"]))


def environment(env: list[str]) -> dict[str, str]:
    """process.env as a dict (later entries win, like execve's users expect)."""
    result: dict[str, str] = {}
    for item in env:
        key, _, value = item.partition("=")
        result[key] = value
    return result


def home_of(uid: int, passwd: str = "/etc/passwd") -> str:
    """The home directory of uid in the container's passwd file ("/" when it has none)."""
    try:
        with open(passwd) as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 6 and fields[2] == str(uid):
                    return fields[5] or "/"
    except OSError:
        pass
    return "/"


def resolve_executable(arg0: str, env: dict[str, str]) -> str:
    """Find args[0] as the container sees it (call after pivot_root), like execvp would."""
    if "/" in arg0:
        if os.access(arg0, os.X_OK) and not os.path.isdir(arg0):
            return arg0
        # runc's (Go's exec.LookPath) words: engines turn them into exit codes 127 and 126
        if not os.path.exists(arg0):
            raise ConfigError("process.args[0]", exec_error(arg0, f"stat {arg0}: {NO_SUCH_FILE}"))
        raise ConfigError("process.args[0]", exec_error(arg0, PERMISSION_DENIED))
    for directory in (env.get("PATH") or DEFAULT_PATH).split(":"):
        candidate = os.path.join(directory or ".", arg0)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    raise ConfigError("process.args[0]", exec_error(arg0, EXEC_NOT_FOUND))


def redirect_stdio(stdio: tuple[int, int, int]) -> None:
    """Make fds 0, 1, 2 of this (forked) process copies of stdio's three fds.

    For the API's stdin/stdout/stderr: done in the child right after the fork, never in the
    caller. The sources are copied above 2 first, so (1, 0, 2) or a source that is also a
    target cannot clobber one another; the copies are close-on-exec and go with init's fd sweep.
    """
    copies = [os.dup(fd) for fd in stdio]
    for target, fd in enumerate(copies):
        os.dup2(fd, target)  # inheritable: the container's process keeps them
        os.close(fd)
