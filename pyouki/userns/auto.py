"""The automatic user namespace: a rootful-style config run by an unprivileged caller.

runc refuses such a config ("a rootless container needs a user namespace"); crun adds a user
namespace by itself, and so does pyouki. The caller's uid and gid become 0 in the container (one
mapping each, written without helpers), so files of the bundle keep a predictable owner. The
annotation `run.pyouki.userns` (or, for every container, the environment variable
`PYOUKI_USERNS`) chooses:

* `single` (default): the caller's uid/gid as 0, nothing else mapped;
* `full`: the caller's uid/gid as 0, then the caller's subordinate ids (/etc/subuid, /etc/subgid)
  as 1, 2, ... through newuidmap/newgidmap, like rootless podman;
* `off`: no automatic namespace (runc's refusal).

What an unprivileged user cannot do is adapted by the set-up itself, as for any rootless container:
device nodes are bind mounts of the host's, sysfs falls back to a bind of /sys, setgroups is
denied with a single gid mapping. Here only the config is changed: the namespace and its mappings
are added, and mount options naming an id the namespace does not map (devpts' `gid=5`) are dropped.
"""

from __future__ import annotations

import os

from pyouki import log
from pyouki.config import namespaces
from pyouki.errors import ConfigError, PyoukiError

ANNOTATION = "run.pyouki.userns"
ENV = "PYOUKI_USERNS"
MODES = ("single", "full", "off")


def wanted(config: dict) -> bool:
    """True when config lacks a user namespace and the caller is not root (in any namespace).

    A config with id mappings but no user namespace is left to validate, which names the field:
    its mappings must not be replaced by ours.
    """
    if os.geteuid() == 0 or "user" in namespaces(config):
        return False
    linux = config.get("linux")
    return not (isinstance(linux, dict) and (linux.get("uidMappings") or linux.get("gidMappings")))


def mode_of(config: dict) -> tuple[str, str]:
    """The requested mode and where it came from (for messages)."""
    annotations = config.get("annotations")
    if isinstance(annotations, dict) and annotations.get(ANNOTATION) is not None:
        value, source = annotations[ANNOTATION], f"annotations.{ANNOTATION}"
    elif os.environ.get(ENV):
        value, source = os.environ[ENV], ENV
    else:
        return "single", ""
    if value not in MODES:
        raise ConfigError(source, f"unknown user namespace mode {value!r} (one of: {', '.join(MODES)})")
    return value, source


def add_user_namespace(config: dict) -> None:
    """Add a user namespace with mappings to config (in place), when wanted() and not switched off."""
    mode, source = mode_of(config)
    if mode == "off":
        log.debug(f"no user namespace in the config and {source}=off: none added")
        return
    uid, gid = os.geteuid(), os.getegid()
    uid_maps = [{"containerID": 0, "hostID": uid, "size": 1}]
    gid_maps = [{"containerID": 0, "hostID": gid, "size": 1}]
    if mode == "full":
        name = _user_name(uid)
        uid_maps += _subordinate_maps("/etc/subuid", name, uid, source)
        gid_maps += _subordinate_maps("/etc/subgid", name, uid, source)
    linux = config.setdefault("linux", {})
    if not isinstance(linux, dict):
        return  # validate names the field
    linux["namespaces"] = [*(linux.get("namespaces") or []), {"type": "user"}]
    linux["uidMappings"] = uid_maps
    linux["gidMappings"] = gid_maps
    extra = "" if mode == "single" else f" and subordinate ids as 1-{_size(uid_maps) - 1}"
    log.debug(f"not root and the config has no user namespace: adding one that maps uid {uid} and gid {gid} "
              f"to 0{extra}; device nodes are bound from the host, sysfs falls back to a bind of /sys where it "
              "cannot be mounted"
              + (", setgroups is denied" if mode == "single" else ""))
    _check_process_ids(config, uid_maps, gid_maps, mode)
    _drop_unmapped_mount_ids(config, uid_maps, gid_maps)


def _size(maps: list[dict]) -> int:
    return sum(int(m["size"]) for m in maps)


def _mapped(maps: list[dict], container_id: int) -> bool:
    return any(m["containerID"] <= container_id < m["containerID"] + m["size"] for m in maps)


def _check_process_ids(config: dict, uid_maps: list[dict], gid_maps: list[dict], mode: str) -> None:
    """A process.user the namespace cannot map fails here, with the way out, not as EINVAL later."""
    process = config.get("process")
    user = process.get("user") if isinstance(process, dict) else None
    if not isinstance(user, dict):
        return
    hint = f" (set the annotation {ANNOTATION}=full to map your subordinate ids)" if mode == "single" else ""
    for key, maps in (("uid", uid_maps), ("gid", gid_maps)):
        value = user.get(key, 0)
        if isinstance(value, int) and not isinstance(value, bool) and not _mapped(maps, value):
            raise ConfigError(f"process.user.{key}", f"{key} {value} is not mapped in the automatic user "
                              f"namespace{hint}")


def _drop_unmapped_mount_ids(config: dict, uid_maps: list[dict], gid_maps: list[dict]) -> None:
    """uid=N/gid=N mount options (devpts' gid=5 in a rootful spec) that the namespace cannot map
    make the mount fail with EINVAL: drop them, as runc's `spec --rootless` does for devpts."""
    mounts = config.get("mounts")
    if not isinstance(mounts, list):
        return
    for i, m in enumerate(mounts):
        options = m.get("options") if isinstance(m, dict) else None
        if not isinstance(options, list):
            continue
        kept = []
        for opt in options:
            key, _, value = opt.partition("=") if isinstance(opt, str) else ("", "", "")
            maps = {"uid": uid_maps, "gid": gid_maps}.get(key)
            if maps is not None and value.isdigit() and not _mapped(maps, int(value)):
                log.debug(f"mounts[{i}].options: dropping {opt!r}: not mapped in the automatic user namespace")
                continue
            kept.append(opt)
        m["options"] = kept


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _subordinate_maps(path: str, name: str, uid: int, source: str) -> list[dict]:
    from pyouki.userns import subids

    found = subids.ranges(path, name, uid)
    if not found:
        raise PyoukiError(f"{source}: full needs subordinate ids, and {path} has none for {name} "
                          f"(fix, as root: {subids.usermod_fix(name)})")
    maps, next_id = [], 1
    for start, count in found:
        maps.append({"containerID": next_id, "hostID": start, "size": count})
        next_id += count
    return maps
