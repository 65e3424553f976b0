"""`exec --cgroup`: run the new process in an existing sub-cgroup of the container's cgroup.

runc 1.1's flag, with its forms and words: `--cgroup PATH` (the same sub-path in every
hierarchy: cgroup v2, or all of v1's), `--cgroup CTRL[,CTRL...]:PATH` (v1, repeatable, per
controller; the others stay in the container's cgroup). The sub-cgroup must exist: exec creates
nothing, and a missing one fails the exec (runc 1.1.5 does the same), never a silent fallback.
"""

from __future__ import annotations

import posixpath

from pyouki.cgroups import common as c
from pyouki.errors import PyoukiError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from pyouki.cgroups.manager import CgroupManager


def parse(args: list[str] | str) -> dict[str, str]:
    """runc's getSubCgroupPaths: {controller: sub-path}, "" for every controller at once."""
    if isinstance(args, str):
        args = [args]
    paths: dict[str, str] = {}
    for arg in args:
        parts = arg.split(":")
        if len(parts) > 2:
            raise PyoukiError(f"invalid --cgroup argument: {arg}")
        if len(parts) == 1:
            if len(args) != 1:
                raise PyoukiError(f"invalid --cgroup argument: {arg} (missing <controller>: prefix)")
            paths[""] = arg
        else:
            for ctrl in parts[0].split(","):
                paths[ctrl] = parts[1]
    for ctrl, sub in paths.items():
        # path.Join would let ".." climb out of the container's cgroup: refused, as runc does
        rel = posixpath.normpath(sub.lstrip("/") or ".")
        if rel == ".." or rel.startswith("../"):
            raise PyoukiError(f"invalid --cgroup argument: {sub} is not a sub cgroup path")
        paths[ctrl] = "" if rel == "." else rel
    return paths


def _bases(mgr: object) -> dict[str, str]:
    """The container's cgroup directories by controller ("" for the v2 or hybrid unified one)."""
    from pyouki.cgroups import _Lenient
    from pyouki.cgroups.v1 import V1Manager
    from pyouki.cgroups.v2 import V2Manager

    if isinstance(mgr, _Lenient):
        if mgr.inner is None:
            raise PyoukiError("--cgroup: the container has no cgroup (rootless, without delegation)")
        return _bases(mgr.inner)
    if isinstance(mgr, V1Manager):
        bases = dict(mgr.paths)
        if mgr.unified:
            bases[""] = mgr.unified
        return bases
    if isinstance(mgr, V2Manager):
        return {"": mgr.path}
    fs = getattr(mgr, "_fs", None)  # the systemd driver: its unit's cgroup through cgroupfs
    if fs is not None:
        return _bases(fs())
    raise PyoukiError(f"--cgroup: not supported with the {getattr(mgr, 'driver', 'unknown')} cgroup driver")


def resolve(bases: dict[str, str], paths: dict[str, str]) -> list[str]:
    """The directories the process joins: each base with its sub-path (pure logic, runc's rules)."""
    dirs = dict(bases)
    if "" in paths:
        # one sub-path for every hierarchy (cgroup v2: the only form)
        dirs = {k: posixpath.join(v, paths[""]) for k, v in bases.items()}
    else:
        for ctrl, sub in paths.items():
            if ctrl not in bases:
                raise PyoukiError(f"invalid --cgroup argument: unknown controller {ctrl}")
            dirs[ctrl] = posixpath.join(bases[ctrl], sub)
    seen: list[str] = []
    for d in dirs.values():
        d = d.rstrip("/") or "/"
        if d not in seen:  # co-mounted controllers share a directory
            seen.append(d)
    return seen


class SubCgroup:
    """The manager exec uses with --cgroup: add_task only, into existing directories.

    attach, when given, is the systemd driver's way in: a rootless caller may not move a process
    into its delegated unit's sub-cgroup itself, systemd may (AttachProcessesToUnit's subcgroup).
    """

    driver = "sub-cgroup"

    def __init__(self, dirs: list[str], attach: Callable[[int], None] | None = None) -> None:
        self.dirs = dirs
        self.attach = attach

    def add_task(self, pid: int) -> None:
        """Write pid to every directory's cgroup.procs; a missing one is an error."""
        try:
            for d in self.dirs:
                c.enter(d, pid)
        except PyoukiError as e:
            if self.attach is None:
                raise
            try:
                self.attach(pid)
            except PyoukiError as e2:
                raise PyoukiError(f"{e} ({e2})") from None


def sub_cgroup(mgr: CgroupManager | None, args: list[str] | str) -> SubCgroup:
    """The sub-cgroup(s) of the container's cgroup that --cgroup names."""
    if mgr is None:
        raise PyoukiError("--cgroup: the container has no cgroup")
    paths = parse(args)
    bases = _bases(mgr)
    sub = SubCgroup(resolve(bases, paths))
    unit = getattr(mgr, "unit", None)
    if unit and list(bases) == [""] and not getattr(mgr, "is_slice", True):
        systemd = mgr.systemd  # type: ignore[attr-defined]
        sub.attach = lambda pid: systemd().attach_processes(unit, [pid], "/" + paths[""])
    return sub
