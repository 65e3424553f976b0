"""Loading a bundle's config.json and checking it before anything is created.

Checks name the offending field by its JSON path (`process.args[0]`, `mounts[2].destination`),
so a user can find it in the file. The checks cover what the runtime relies on; fields pyouki
does not use are left to the schema.
"""

from __future__ import annotations

import os

from pyouki.errors import ConfigError, PyoukiError, reason

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (2 ms)
if TYPE_CHECKING:
    from typing import Any

MAX_ID = 2**32 - 2  # uid_t and gid_t; (uid_t)-1 means "no change" to the kernel
# linux.resources: the type of each member (runtime-spec config-linux.json)
RESOURCE_KINDS = {"devices": list, "memory": dict, "cpu": dict, "pids": dict, "blockIO": dict,
                  "hugepageLimits": list, "network": dict, "rdma": dict, "unified": dict}
# the config's platform sections (config.md "Platform-specific configuration") besides linux
OTHER_PLATFORMS = ("windows", "solaris", "vm", "zos", "freebsd")
# process fields that are refused rather than ignored
UNSUPPORTED_PROCESS_FIELDS = {
    "commandLine": "windows only: on linux the command is process.args",
}
NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")
# the one namespace table of create and exec: each type's file under /proc/PID/ns, in the order
# they are joined (the user namespace first, so the others are joined with its privileges; mount
# last, as it hides the host's /proc). Their clone flags: become.NS_FLAGS.
NS_FILES = {"user": "user", "ipc": "ipc", "uts": "uts", "network": "net", "pid": "pid", "cgroup": "cgroup",
            "time": "time", "mount": "mnt"}


class _ScannerContext:
    """What _json's C scanner reads from json.JSONDecoder, without importing json.decoder (it
    pulls in re and enum: ~4 ms on every create)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity, as json.loads gives them
    memo: dict = {}


def parse_json(text: str, path: str) -> object:
    """Parse a JSON document with the json package's C scanner; errors name the file and place."""
    import _json

    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        value, end = _json.make_scanner(_ScannerContext())(text, start)  # type: ignore[arg-type]
    except RecursionError:
        raise PyoukiError(f"failed to parse {path}: nested too deeply") from None
    except (StopIteration, ValueError, SystemError):
        # the C scanner reports errors through json.decoder: let the full module say what is wrong
        import json

        try:
            json.loads(text)
        except ValueError as e:
            raise PyoukiError(f"failed to parse {path}: {e}") from None
        except RecursionError:
            raise PyoukiError(f"failed to parse {path}: nested too deeply") from None
        raise PyoukiError(f"failed to parse {path}: invalid JSON") from None
    finally:
        _ScannerContext.memo.clear()
    if text[end:].strip(" \t\n\r"):
        raise PyoukiError(f"failed to parse {path}: {_where(text, end)}: extra data after the document")
    return value


def _where(text: str, index: int) -> str:
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return f"line {line} column {column}"


def load_bundle(bundle: str) -> tuple[str, dict]:
    """Read `<bundle>/config.json`; return the absolute bundle path and the config."""
    bundle = os.path.abspath(bundle)
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8-sig")
    except FileNotFoundError:
        raise PyoukiError(f"failed to read {path}: no such file or directory") from None
    except OSError as e:
        raise PyoukiError(f"failed to read {path}: {reason(e)}") from None
    except UnicodeDecodeError as e:
        raise PyoukiError(f"failed to read {path}: not UTF-8 ({e.reason})") from None
    config = parse_json(text, path)
    if not isinstance(config, dict):
        raise PyoukiError(f"failed to parse {path}: the top level is not an object")
    return bundle, config


def _expect(value: Any, kind: type | tuple[type, ...], field: str) -> Any:
    names = {str: "a string", int: "an integer", bool: "a boolean", list: "an array", dict: "an object"}
    if isinstance(value, bool) and kind is int:
        raise ConfigError(field, "must be an integer")
    if not isinstance(value, kind):
        want = names.get(kind, "of another type") if isinstance(kind, type) else "of another type"
        raise ConfigError(field, f"must be {want}")
    return value


def _optional(obj: dict, key: str, kind: type, field: str, default: Any = None) -> Any:
    value = obj.get(key)
    if value is None:
        return default
    return _expect(value, kind, f"{field}.{key}" if field else key)


def namespaces(config: dict) -> dict[str, str | None]:
    """The `linux.namespaces` list as {type: path or None}, checked."""
    linux = _optional(config, "linux", dict, "", {})
    result: dict[str, str | None] = {}
    for i, ns in enumerate(_optional(linux, "namespaces", list, "linux", [])):
        field = f"linux.namespaces[{i}]"
        _expect(ns, dict, field)
        kind = ns.get("type")
        if kind not in NAMESPACE_TYPES:
            raise ConfigError(f"{field}.type", f"unknown namespace type {kind!r}")
        if kind in result:
            raise ConfigError(f"{field}.type", f"namespace {kind!r} given twice")
        path = _optional(ns, "path", str, field)
        if path is not None and not os.path.isabs(path):
            raise ConfigError(f"{field}.path", f"{path!r} is not an absolute path")
        result[kind] = path or None
    return result


def check_strings(value: object, field: str = "") -> None:
    """No string in the config (value or key) may hold a NUL byte or a lone surrogate (a JSON
    "\\ud800" escape): neither can reach the kernel (paths, args, env, names), and Python would
    fail on it deep inside the set-up."""
    stack = [(value, field)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            _check_string(item, where or "(top level)")
        elif isinstance(item, dict):
            for key, inner in item.items():
                _check_string(key, where or "(top level)", f"key {key!r} ")
                stack.append((inner, f"{where}.{key}" if where else key))
        elif isinstance(item, list):
            stack.extend((inner, f"{where}[{i}]") for i, inner in enumerate(item))


def _check_string(text: str, field: str, what: str = "") -> None:
    if "\0" in text:
        raise ConfigError(field, f"{what}must not contain a NUL byte")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise ConfigError(field, f"{what}is not valid unicode (a lone surrogate)") from None


def check_process(process: dict) -> None:
    """Check a process object: config.json's `process` at create, and at exec the --process file
    or the container's process with exec's flags applied, so both refuse the same things in the
    same words (each naming its JSON path)."""
    for key, why in UNSUPPORTED_PROCESS_FIELDS.items():
        if key in process:
            raise ConfigError(f"process.{key}", why)
    if "username" in _optional(process, "user", dict, "process", {}):
        raise ConfigError("process.user.username", "windows only: on linux the user is process.user.uid")
    if "execCPUAffinity" in process:
        # not applicable to init (config.md): checked here, applied by exec to the processes it runs
        from pyouki.exec import cpu_affinity

        for key in ("initial", "final"):
            cpu_affinity(process, key)
    args = _expect(process.get("args"), list, "process.args")
    if not args:
        raise ConfigError("process.args", "must not be empty")
    for i, arg in enumerate(args):
        _expect(arg, str, f"process.args[{i}]")
    cwd = _expect(process.get("cwd", "/"), str, "process.cwd")
    if not os.path.isabs(cwd):
        raise ConfigError("process.cwd", f"{cwd!r} is not an absolute path")
    for i, env in enumerate(_optional(process, "env", list, "process", [])):
        if not isinstance(env, str) or "=" not in env:
            raise ConfigError(f"process.env[{i}]", "must be a string of the form KEY=VALUE")
    user = _optional(process, "user", dict, "process", {})
    for key, most in (("uid", MAX_ID), ("gid", MAX_ID), ("umask", 0o7777)):
        value = _optional(user, key, int, "process.user")
        if value is not None and value < 0:
            raise ConfigError(f"process.user.{key}", "must not be negative")
        if value is not None and value > most:
            raise ConfigError(f"process.user.{key}", f"must be at most {most}")
    for i, gid in enumerate(_optional(user, "additionalGids", list, "process.user", [])):
        _expect(gid, int, f"process.user.additionalGids[{i}]")
        if not 0 <= gid <= MAX_ID:
            raise ConfigError(f"process.user.additionalGids[{i}]", f"must be between 0 and {MAX_ID}")
    if process.get("terminal"):
        pass  # checked against --console-socket by the caller
    for i, rl in enumerate(_optional(process, "rlimits", list, "process", [])):
        field = f"process.rlimits[{i}]"
        _expect(rl, dict, field)
        from pyouki.process import RLIMITS

        if not isinstance(rl.get("type"), str) or rl.get("type") not in RLIMITS:
            raise ConfigError(f"{field}.type", f"unknown rlimit {rl.get('type')!r}")
        _expect(rl.get("soft"), int, f"{field}.soft")
        _expect(rl.get("hard"), int, f"{field}.hard")
    caps = _optional(process, "capabilities", dict, "process", {})
    if caps:
        from pyouki.caps import known_cap

        for key in ("bounding", "effective", "inheritable", "permitted", "ambient"):
            for i, name in enumerate(_optional(caps, key, list, "process.capabilities", [])):
                known_cap(name, f"process.capabilities.{key}[{i}]")  # unknown ones: a warning, later
    _optional(process, "noNewPrivileges", bool, "process")
    oom = _optional(process, "oomScoreAdj", int, "process")
    if oom is not None and not -1000 <= oom <= 1000:
        raise ConfigError("process.oomScoreAdj", "must be between -1000 and 1000")


def validate(config: dict, bundle: str, rootless: bool) -> str:
    """Check the fields pyouki relies on; return the absolute rootfs path."""
    check_strings(config)
    if not isinstance(config.get("ociVersion"), str):
        raise ConfigError("ociVersion", "must be a string")
    root = _expect(config.get("root"), dict, "root")
    root_path = _expect(root.get("path"), str, "root.path")
    rootfs = os.path.join(bundle, root_path)
    if not os.path.isdir(rootfs):
        raise ConfigError("root.path", f"rootfs {rootfs} does not exist or is not a directory")
    _optional(root, "readonly", bool, "root")

    # engines read annotations back from state (JSON strings only): values are strings per the spec
    for key, value in _optional(config, "annotations", dict, "", {}).items():
        _expect(value, str, f"annotations.{key}")

    for platform in OTHER_PLATFORMS:
        if platform in config:
            raise ConfigError(platform, f"a {platform} container's settings: pyouki runs linux containers")

    process = _expect(config.get("process"), dict, "process")
    check_process(process)
    from pyouki import procattrs  # process.scheduler/ioPriority, linux.personality/memoryPolicy

    procattrs.check(config)

    for i, m in enumerate(_optional(config, "mounts", list, "", [])):
        field = f"mounts[{i}]"
        _expect(m, dict, field)
        dest = _expect(m.get("destination"), str, f"{field}.destination")
        if not os.path.isabs(dest):
            raise ConfigError(f"{field}.destination", f"{dest!r} is not an absolute path")
        _optional(m, "source", str, field)
        _optional(m, "type", str, field)
        for j, opt in enumerate(_optional(m, "options", list, field, [])):
            _expect(opt, str, f"{field}.options[{j}]")

    _optional(config, "hostname", str, "")
    _optional(config, "domainname", str, "")
    nss = namespaces(config)
    if (config.get("hostname") or config.get("domainname")) and "uts" not in nss:
        raise ConfigError("hostname", "setting the hostname needs a new uts namespace")
    linux = _optional(config, "linux", dict, "", {})
    _optional(linux, "cgroupsPath", str, "linux")
    resources = _optional(linux, "resources", dict, "linux", {})
    for key, kind in RESOURCE_KINDS.items():
        value = _optional(resources, key, kind, "linux.resources")  # the drivers check what is inside
        if kind is list:
            for i, entry in enumerate(value or []):
                _expect(entry, dict, f"linux.resources.{key}[{i}]")
    for key in ("uidMappings", "gidMappings"):
        maps = _optional(linux, key, list, "linux", [])
        for i, entry in enumerate(maps):
            field = f"linux.{key}[{i}]"
            _expect(entry, dict, field)
            for k in ("containerID", "hostID", "size"):
                _expect(entry.get(k), int, f"{field}.{k}")
        if maps and "user" not in nss:
            raise ConfigError(f"linux.{key}", "id mappings need a user namespace")
    if "user" in nss and nss["user"] is None and not linux.get("uidMappings"):
        raise ConfigError("linux.uidMappings", "a new user namespace needs uid and gid mappings")
    if rootless and "user" not in nss and not _in_userns_already():
        raise ConfigError("linux.namespaces", "a rootless container needs a user namespace")
    for i, dev in enumerate(_optional(linux, "devices", list, "linux", [])):
        field = f"linux.devices[{i}]"
        _expect(dev, dict, field)
        path = _expect(dev.get("path"), str, f"{field}.path")
        if not os.path.isabs(path):
            raise ConfigError(f"{field}.path", f"{path!r} is not an absolute path")
        if dev.get("type") not in ("c", "b", "u", "p"):
            raise ConfigError(f"{field}.type", f"unknown device type {dev.get('type')!r}")
    for key in ("maskedPaths", "readonlyPaths"):
        for i, p in enumerate(_optional(linux, key, list, "linux", [])):
            _expect(p, str, f"linux.{key}[{i}]")
    for key, value in _optional(linux, "sysctl", dict, "linux", {}).items():
        _expect(value, str, f"linux.sysctl.{key}")
        check_sysctl(key, nss)
    prop = _optional(linux, "rootfsPropagation", str, "linux")
    if prop is not None and prop not in ("private", "rprivate", "slave", "rslave", "shared", "rshared",
                                         "unbindable", "runbindable", ""):
        raise ConfigError("linux.rootfsPropagation", f"unknown propagation {prop!r}")
    if "mount" not in nss:
        _without_mount_namespace(config, linux)
    if config.get("hooks") is not None:
        from pyouki.hooks import validate as validate_hooks

        validate_hooks(config)
    seccomp = _optional(linux, "seccomp", dict, "linux")
    if seccomp:
        from pyouki.seccomp import validate as validate_seccomp

        validate_seccomp(seccomp, "linux.seccomp")
    from pyouki import lsm

    lsm.check(process, linux)
    return rootfs


def _without_mount_namespace(config: dict, linux: dict) -> None:
    """A container without a mount namespace inherits the runtime's (the spec's MUST): the rootfs
    becomes a chroot and nothing is mounted, so what needs a mount of its own is refused rather than
    done on the host's mount table (runc refuses masked and read-only paths so, and mounts on it)."""
    why = "needs a mount namespace, and linux.namespaces has none: it would change the host's mounts"
    if config.get("mounts"):
        raise ConfigError("mounts", why)
    for key in ("maskedPaths", "readonlyPaths", "devices", "rootfsPropagation", "mountLabel"):
        if linux.get(key):
            raise ConfigError(f"linux.{key}", why)
    if (config.get("root") or {}).get("readonly"):
        raise ConfigError("root.readonly", why)


# The ipc namespace's sysctls (ipc/ipc_sysctl.c), besides the fs.mqueue.* tree (ipc/mq_sysctl.c).
IPC_SYSCTLS = frozenset((
    "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.msg_next_id",
    "kernel.sem", "kernel.sem_next_id",
    "kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced", "kernel.shm_next_id",
))


def sysctl_namespace(key: str) -> str | None:
    """The namespace that owns sysctl `key` ("ipc", "network", "uts"), or None when it is global.

    `key` is in sysctl(8)'s dotted form; the slash form ("net/ipv4/ip_forward") is accepted too,
    as runc does (a "." inside a slash-form component, e.g. an interface name, is kept).
    """
    first = min((i for i in (key.find("."), key.find("/")) if i >= 0), default=-1)
    if first >= 0 and key[first] == "/":
        key = key.translate(str.maketrans("./", "/."))
    if key in IPC_SYSCTLS or key.startswith("fs.mqueue."):
        return "ipc"
    if key.startswith("net."):
        return "network"
    if key in ("kernel.hostname", "kernel.domainname"):
        return "uts"
    return None


def check_sysctl(key: str, nss: dict[str, str | None]) -> None:
    """Refuse a linux.sysctl key that would be written outside the container's own namespaces.

    /proc/sys is only partly namespaced: a global key (kernel.core_pattern) or a namespaced key
    without the container's own namespace of that kind would change the host, as runc's
    validator refuses. A namespace joined by path must not be the runtime's own or init's.
    """
    field = f"linux.sysctl.{key}"
    parts = key.replace("/", ".").split(".")
    if "\0" in key or len(parts) < 2 or any(not p for p in parts):
        raise ConfigError(field, "not a valid sysctl name")
    kind = sysctl_namespace(key)
    if kind is None:
        raise ConfigError(field, "not in a separate kernel namespace: it would be set for the whole host")
    if kind not in nss:
        raise ConfigError(field, f"needs the container's own {kind} namespace, and linux.namespaces has none: "
                                 f"it would be set in the host's")
    if kind == "uts" and key.replace("/", ".") == "kernel.hostname":
        raise ConfigError(field, "conflicts with the hostname field: set hostname instead")
    path = nss[kind]
    if path is not None and _is_host_namespace(kind, path):
        raise ConfigError(field, f"the {kind} namespace joined at {path} is the host's: it would be set there")


def _is_host_namespace(kind: str, path: str) -> bool:
    """True when the namespace file at path is this process's or init's namespace of that kind."""
    name = NS_FILES[kind]
    try:
        st = os.stat(path)
    except OSError:
        return False  # joining it fails later, naming the path
    for own in (f"/proc/self/ns/{name}", f"/proc/1/ns/{name}"):
        try:
            o = os.stat(own)
        except OSError:
            continue
        if (o.st_dev, o.st_ino) == (st.st_dev, st.st_ino):
            return True
    return False


def _in_userns_already() -> bool:
    from pyouki.state import in_user_namespace

    return in_user_namespace()
