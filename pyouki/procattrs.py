"""Process attributes the kernel keeps across execve: linux.personality, linux.memoryPolicy,
process.scheduler and process.ioPriority.

`check` parses and checks them in the runtime's own process (create, exec) before anything is
started, so a wrong value is one line naming its JSON path and nothing is left behind; it keeps
the result, which fork hands to the container process. There `apply` (one call from
pyouki.become.become_process, shared by init and exec) sets them, in this order and for these
reasons:

* before the seccomp filter: the container's profile restricts the container's program, not
  the runtime's set-up (docker's profile allows personality() for a few values only; crun also
  sets the personality before loading the filter);
* before the capability drop: SCHED_FIFO/SCHED_RR/SCHED_DEADLINE and a negative nice need
  CAP_SYS_NICE, IOPRIO_CLASS_RT needs CAP_SYS_ADMIN or CAP_SYS_NICE (all of the host's user
  namespace, so a rootless container gets them only within RLIMIT_RTPRIO/RLIMIT_NICE).

All four are per process, kept by execve and inherited by children, so setting them on the
process that is about to exec the container's program covers everything it will start.
An `exec` whose process has no scheduler or ioPriority of its own gets the container's, as
with runc; personality and memoryPolicy are the container's and apply to exec'd processes too.
"""

from __future__ import annotations

import os

from pyouki.errors import ConfigError, PyoukiError, reason

PERSONALITY_DOMAINS = {"LINUX": 0x0000, "LINUX32": 0x0008}  # PER_LINUX, PER_LINUX32

SCHED_POLICIES = {
    "SCHED_OTHER": 0, "SCHED_FIFO": 1, "SCHED_RR": 2, "SCHED_BATCH": 3,
    "SCHED_ISO": 4,  # reserved by Linux and never implemented: the kernel's EINVAL says so
    "SCHED_IDLE": 5, "SCHED_DEADLINE": 6,
}
SCHED_FLAGS = {
    "SCHED_FLAG_RESET_ON_FORK": 0x01, "SCHED_FLAG_RECLAIM": 0x02, "SCHED_FLAG_DL_OVERRUN": 0x04,
    "SCHED_FLAG_KEEP_POLICY": 0x08, "SCHED_FLAG_KEEP_PARAMS": 0x10,
    "SCHED_FLAG_UTIL_CLAMP_MIN": 0x20, "SCHED_FLAG_UTIL_CLAMP_MAX": 0x40,
}
_RT = ("SCHED_FIFO", "SCHED_RR")
_NICE_POLICIES = ("SCHED_OTHER", "SCHED_BATCH", "SCHED_IDLE")  # the fair class: the only ones nice affects
_DL_ONLY_FLAGS = ("SCHED_FLAG_RECLAIM", "SCHED_FLAG_DL_OVERRUN")
_UCLAMP_MAX = 1024  # SCHED_CAPACITY_SCALE: the spec carries no clamp values, the flags get the full range

IOPRIO_CLASSES = {"IOPRIO_CLASS_RT": 1, "IOPRIO_CLASS_BE": 2, "IOPRIO_CLASS_IDLE": 3}

MPOL_MODES = {  # in the runtime spec's order
    "MPOL_DEFAULT": 0, "MPOL_BIND": 2, "MPOL_INTERLEAVE": 3, "MPOL_WEIGHTED_INTERLEAVE": 6, "MPOL_PREFERRED": 1,
    "MPOL_PREFERRED_MANY": 5, "MPOL_LOCAL": 4,
}
MPOL_FLAGS = {"MPOL_F_NUMA_BALANCING": 1 << 13, "MPOL_F_RELATIVE_NODES": 1 << 14, "MPOL_F_STATIC_NODES": 1 << 15}
_NO_NODES = ("MPOL_DEFAULT", "MPOL_LOCAL")
_NEED_NODES = ("MPOL_BIND", "MPOL_INTERLEAVE", "MPOL_WEIGHTED_INTERLEAVE", "MPOL_PREFERRED_MANY")
_MAX_NODES = 1 << 10  # MAX_NUMNODES at its largest (CONFIG_NODES_SHIFT=10)
NODE_DIR = "/sys/devices/system/node"


class _Scheduler:
    def __init__(self, policy: str, nice: int, priority: int, flags: list[str], runtime: int, deadline: int,
                 period: int) -> None:
        self.policy, self.nice, self.priority, self.flags = policy, nice, priority, flags
        self.runtime, self.deadline, self.period = runtime, deadline, period


class _MemoryPolicy:
    def __init__(self, mode: str, flags: list[str], nodes: list[int]) -> None:
        self.mode, self.flags, self.nodes = mode, flags, nodes


class ProcAttrs:
    """The four attributes of one container process, checked; None where the config has none."""

    def __init__(self, process: dict) -> None:
        self.process = process  # the process object these were resolved for (see apply)
        self.personality: tuple[str, int] | None = None
        self.memory_policy: _MemoryPolicy | None = None
        self.scheduler: _Scheduler | None = None
        self.io_priority: tuple[str, int] | None = None


_pending: ProcAttrs | None = None  # set by check() in the runtime, inherited by the forked child


def check(config: dict, process: dict | None = None) -> ProcAttrs:
    """Parse and check the four attributes (process: exec's own process object; by default
    config's); keep the result for apply() in the child about to be forked. Raises ConfigError."""
    global _pending
    base = config.get("process") or {}
    if process is None:
        process = base
    linux = config.get("linux") or {}
    if not isinstance(linux, dict):
        linux = {}  # reported by pyouki.config
    attrs = ProcAttrs(process)
    if linux.get("personality") is not None:
        attrs.personality = _personality(linux["personality"])
    if linux.get("memoryPolicy") is not None:
        attrs.memory_policy = _memory_policy(linux["memoryPolicy"])
    # exec: a process without its own scheduler or ioPriority runs with the container's (runc's rule)
    scheduler = process.get("scheduler") if "scheduler" in process else base.get("scheduler")
    if scheduler is not None:
        attrs.scheduler = _scheduler(scheduler)
        s = attrs.scheduler
        if (s.policy == "SCHED_DEADLINE" and "SCHED_FLAG_RESET_ON_FORK" not in s.flags and process is base
                and ((config.get("hooks") or {}).get("startContainer"))):
            # init runs them after taking on the scheduler, and a deadline task may not fork
            raise ConfigError("process.scheduler.flags", "SCHED_DEADLINE without SCHED_FLAG_RESET_ON_FORK leaves "
                              "init unable to start the startContainer hooks (a deadline task cannot fork)")
    io_priority = process.get("ioPriority") if "ioPriority" in process else base.get("ioPriority")
    if io_priority is not None:
        attrs.io_priority = _io_priority(io_priority)
    _pending = attrs
    return attrs


def _object(value: object, field: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(field, "must be an object")
    return value


def _int(obj: dict, key: str, field: str, lo: int, hi: int, default: int = 0) -> int:
    value = obj.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{field}.{key}", "must be an integer")
    if not lo <= value <= hi:
        raise ConfigError(f"{field}.{key}", f"{value} is out of range ({lo} to {hi})")
    return value


def _names(obj: dict, key: str, field: str, known: dict[str, int]) -> list[str]:
    values = obj.get(key) or []
    if not isinstance(values, list):
        raise ConfigError(f"{field}.{key}", "must be an array")
    for i, name in enumerate(values):
        if name not in known:
            raise ConfigError(f"{field}.{key}[{i}]", f"unknown flag {name!r} (known: {', '.join(known)})")
    return list(dict.fromkeys(values))


def _choice(obj: dict, key: str, field: str, known: dict[str, int]) -> str:
    value = obj.get(key)
    if value is None:
        raise ConfigError(f"{field}.{key}", "is required")
    if value not in known:
        raise ConfigError(f"{field}.{key}", f"unknown value {value!r} (known: {', '.join(known)})")
    return str(value)


def _personality(value: object) -> tuple[str, int]:
    field = "linux.personality"
    obj = _object(value, field)
    domain = _choice(obj, "domain", field, PERSONALITY_DOMAINS)
    flags = obj.get("flags")
    if flags is not None and not isinstance(flags, list):
        raise ConfigError(f"{field}.flags", "must be an array")
    if flags:
        # runc warns and drops them; a dropped setting is a silent surprise, so refuse
        raise ConfigError(f"{field}.flags[0]", f"{flags[0]!r} is not supported (the runtime spec defines no "
                                               "personality flags)")
    return domain, PERSONALITY_DOMAINS[domain]


def _scheduler(value: object) -> _Scheduler:
    field = "process.scheduler"
    obj = _object(value, field)
    policy = _choice(obj, "policy", field, SCHED_POLICIES)
    nice = _int(obj, "nice", field, -20, 19)
    priority = _int(obj, "priority", field, -(2**31), 2**31 - 1)
    flags = _names(obj, "flags", field, SCHED_FLAGS)
    runtime, deadline, period = (_int(obj, k, field, 0, 2**63 - 1) for k in ("runtime", "deadline", "period"))
    # what the kernel would refuse or silently not use, refused here with the field's name
    if policy in _RT and not 1 <= priority <= 99:
        raise ConfigError(f"{field}.priority", f"{policy} needs a priority from 1 to 99")
    if policy not in _RT and priority:
        raise ConfigError(f"{field}.priority", "only SCHED_FIFO and SCHED_RR have a static priority")
    if nice and policy not in _NICE_POLICIES:
        raise ConfigError(f"{field}.nice", f"{policy} does not use a nice value (only {', '.join(_NICE_POLICIES)})")
    if policy == "SCHED_DEADLINE":
        if runtime < 1024:
            raise ConfigError(f"{field}.runtime", "SCHED_DEADLINE needs a runtime of at least 1024 ns")
        if deadline < runtime:
            raise ConfigError(f"{field}.deadline", f"must be at least the runtime ({runtime} ns)")
        if period and period < deadline:
            raise ConfigError(f"{field}.period", f"must be 0 (the deadline) or at least the deadline ({deadline} ns)")
    else:
        for key, v in (("runtime", runtime), ("deadline", deadline), ("period", period)):
            if v:
                raise ConfigError(f"{field}.{key}", "only SCHED_DEADLINE has a runtime, deadline and period")
        for i, name in enumerate(obj.get("flags") or []):
            if name in _DL_ONLY_FLAGS:
                raise ConfigError(f"{field}.flags[{i}]", f"{name} applies to SCHED_DEADLINE only")
    return _Scheduler(policy, nice, priority, flags, runtime, deadline, period)


def _io_priority(value: object) -> tuple[str, int]:
    field = "process.ioPriority"
    obj = _object(value, field)
    klass = _choice(obj, "class", field, IOPRIO_CLASSES)
    level = _int(obj, "priority", field, 0, 7)
    return klass, level


def parse_nodes(text: str, field: str) -> list[int]:
    """A node list such as "0-3,7" as [0, 1, 2, 3, 7]; ConfigError naming field when malformed."""
    nodes: list[int] = []
    for part in text.split(",") if text.strip() else []:
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise ConfigError(field, f"{part.strip()!r} is not a node number or range (e.g. \"0-3,7\")")
        a, b = int(lo), int(hi) if dash else int(lo)
        if b < a:
            raise ConfigError(field, f"{part.strip()!r} is an empty range")
        if b >= _MAX_NODES:
            raise ConfigError(field, f"node {b} is beyond the largest node number Linux supports ({_MAX_NODES - 1})")
        nodes.extend(range(a, b + 1))
    return sorted(set(nodes))


def _memory_policy(value: object) -> _MemoryPolicy:
    field = "linux.memoryPolicy"
    obj = _object(value, field)
    mode = _choice(obj, "mode", field, MPOL_MODES)
    flags = _names(obj, "flags", field, MPOL_FLAGS)
    text = obj.get("nodes")
    if text is not None and not isinstance(text, str):
        raise ConfigError(f"{field}.nodes", "must be a string")
    nodes = parse_nodes(text or "", f"{field}.nodes")
    if mode in _NO_NODES:
        if nodes:
            raise ConfigError(f"{field}.nodes", f"{mode} takes no nodes")
        if flags:
            raise ConfigError(f"{field}.flags", f"{mode} takes no flags")
    if mode in _NEED_NODES and not nodes:
        raise ConfigError(f"{field}.nodes", f"{mode} needs at least one node")
    if "MPOL_F_STATIC_NODES" in flags and "MPOL_F_RELATIVE_NODES" in flags:
        raise ConfigError(f"{field}.flags", "MPOL_F_STATIC_NODES and MPOL_F_RELATIVE_NODES exclude each other")
    if "MPOL_F_NUMA_BALANCING" in flags and mode not in ("MPOL_BIND", "MPOL_PREFERRED_MANY"):
        raise ConfigError(f"{field}.flags", "MPOL_F_NUMA_BALANCING goes with MPOL_BIND or MPOL_PREFERRED_MANY only")
    if "MPOL_F_RELATIVE_NODES" not in flags:  # relative node numbers are indexes, not nodes
        _check_nodes_exist(nodes, f"{field}.nodes")
    return _MemoryPolicy(mode, flags, nodes)


def _read_node_list(path: str) -> list[int] | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    try:
        return parse_nodes(text, path)
    except ConfigError:
        return None


def _check_nodes_exist(nodes: list[int], field: str) -> None:
    if not os.path.isdir(NODE_DIR):
        raise ConfigError(field.rsplit(".", 1)[0], "this kernel has no NUMA support (no memory policy can be set)")
    # N_MEMORY: the kernel silently drops a node without memory from the mask
    present = _read_node_list(f"{NODE_DIR}/has_memory") or _read_node_list(f"{NODE_DIR}/online")
    if present is None:
        return
    for node in nodes:
        if node not in present:
            raise ConfigError(field, f"node {node} does not exist or has no memory (memory nodes here: "
                                     f"{_ranges(present)})")


def _ranges(nodes: list[int]) -> str:
    """[0, 1, 2, 5] as "0-2,5"."""
    runs: list[list[int]] = []
    for n in sorted(nodes):
        if runs and runs[-1][1] == n - 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def apply(process: dict) -> None:
    """In the container process, before seccomp and the capability drop: set what check() found
    (the process-level attributes of process itself when check() saw another process object)."""
    attrs = _pending
    if attrs is None or attrs.process is not process:
        container = attrs
        attrs = check({"process": process})
        if container is not None:  # the container-wide ones stay those check() found
            attrs.personality, attrs.memory_policy = container.personality, container.memory_policy
    if attrs.personality is not None:
        _apply_personality(*attrs.personality)
    if attrs.memory_policy is not None:
        _apply_memory_policy(attrs.memory_policy)
    if attrs.scheduler is not None:
        _apply_scheduler(attrs.scheduler)
    if attrs.io_priority is not None:
        _apply_io_priority(*attrs.io_priority)


def _apply_personality(domain: str, persona: int) -> None:
    from pyouki import syscalls as sc

    try:
        sc.personality(persona)
    except OSError as e:
        raise PyoukiError(f"linux.personality.domain: failed to set {domain}: {reason(e)}") from None


def _apply_memory_policy(mp: _MemoryPolicy) -> None:
    from pyouki import syscalls as sc

    field = "linux.memoryPolicy"
    if mp.nodes and not {"MPOL_F_STATIC_NODES", "MPOL_F_RELATIVE_NODES"} & set(mp.flags):
        # without these flags the kernel keeps only the nodes of our cpuset, silently
        allowed = _mems_allowed()
        outside = [n for n in mp.nodes if allowed is not None and n not in allowed]
        if outside and allowed is not None:
            raise PyoukiError(f"{field}.nodes: node {outside[0]} is outside the container's cpuset "
                              f"(allowed: {_ranges(allowed)}; MPOL_F_STATIC_NODES keeps it for later)")
    mode = MPOL_MODES[mp.mode]
    for name in mp.flags:
        mode |= MPOL_FLAGS[name]
    try:
        sc.set_mempolicy(mode, mp.nodes)
    except OSError as e:
        hint = ""
        if e.errno == 38:  # ENOSYS
            hint = " (this kernel has no NUMA support)"
        elif e.errno == 22:  # EINVAL
            hint = " (this kernel may not know this mode or flag, or no node of the list is usable)"
        raise PyoukiError(f"{field}: failed to set {mp.mode} on nodes {_ranges(mp.nodes) or 'none'}"
                          f"{' with ' + '|'.join(mp.flags) if mp.flags else ''}: {reason(e)}{hint}") from None


def _mems_allowed() -> list[int] | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Mems_allowed_list:"):
                    return parse_nodes(line.split(":", 1)[1].strip(), "Mems_allowed_list")
    except (OSError, ConfigError):
        pass
    return None  # no /proc in the container: the kernel's own checks remain


def _apply_scheduler(s: _Scheduler) -> None:
    from pyouki import syscalls as sc

    attr = sc.SchedAttr()
    attr.sched_policy = SCHED_POLICIES[s.policy]
    attr.sched_nice, attr.sched_priority = s.nice, s.priority
    attr.sched_runtime, attr.sched_deadline, attr.sched_period = s.runtime, s.deadline, s.period
    for name in s.flags:
        attr.sched_flags |= SCHED_FLAGS[name]
    attr.sched_util_min, attr.sched_util_max = 0, _UCLAMP_MAX
    try:
        sc.sched_setattr(attr)
    except OSError as e:
        raise PyoukiError(f"process.scheduler: failed to set {_describe(s)}: {reason(e)}{_sched_hint(s, e.errno)}") \
            from None


def _describe(s: _Scheduler) -> str:
    what = s.policy
    if s.policy in _RT:
        what += f" priority {s.priority}"
    if s.nice:
        what += f" nice {s.nice}"
    if s.policy == "SCHED_DEADLINE":
        what += f" runtime {s.runtime} deadline {s.deadline} period {s.period or s.deadline} ns"
    if s.flags:
        what += " with " + "|".join(s.flags)
    return what


def _sched_hint(s: _Scheduler, errno: int | None) -> str:
    uclamp = [f for f in s.flags if f.startswith("SCHED_FLAG_UTIL_CLAMP")]
    if errno == 95 and uclamp:  # EOPNOTSUPP
        return " (this kernel has no utilization clamping, CONFIG_UCLAMP_TASK)"
    if errno == 22 and s.policy == "SCHED_ISO":
        return " (Linux has no SCHED_ISO)"
    if errno == 22 and s.policy == "SCHED_DEADLINE":
        return (" (the period must lie within kernel.sched_deadline_period_min_us and "
                "kernel.sched_deadline_period_max_us)")
    if errno == 16 and s.policy == "SCHED_DEADLINE":  # EBUSY
        return " (the CPUs' SCHED_DEADLINE bandwidth is taken: admission control refused it)"
    if errno == 1:  # EPERM
        if s.policy == "SCHED_DEADLINE":
            return (" (needs CAP_SYS_NICE of the host, and the process may use every CPU of its root "
                    "domain: no narrower cpuset)")
        if s.policy in _RT:
            return (" (needs CAP_SYS_NICE of the host or an RLIMIT_RTPRIO that allows it; on cgroup v1 with "
                    "RT group scheduling also linux.resources.cpu.realtimeRuntime)")
        if s.nice < 0:
            return " (a negative nice needs CAP_SYS_NICE of the host or an RLIMIT_NICE that allows it)"
        return " (needs CAP_SYS_NICE of the host)"
    return ""


def _apply_io_priority(klass: str, level: int) -> None:
    from pyouki import syscalls as sc

    # IOPRIO_WHO_PROCESS rather than runc's IOPRIO_WHO_PGRP: the process has no children yet, and
    # an exec'd process may still be in its caller's process group, on the host
    try:
        sc.ioprio_set(IOPRIO_CLASSES[klass] << sc.IOPRIO_CLASS_SHIFT | level)
    except OSError as e:
        hint = " (IOPRIO_CLASS_RT needs CAP_SYS_ADMIN or CAP_SYS_NICE of the host)" if e.errno == 1 else ""
        raise PyoukiError(f"process.ioPriority: failed to set {klass} priority {level}: {reason(e)}{hint}") from None
