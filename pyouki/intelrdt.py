"""`linux.intelRdt`: the container's Intel RDT class of service and monitoring group (resctrl).

As config-linux.md says: the container's tasks go to the `closID` directory of the mounted
resctrl filesystem (`/` is its root, the default CLOS; without closID, a directory named after
the container, which the runtime creates and removes with the container). `l3CacheSchema`,
`memBwSchema` then the `schemata` lines are written, in that order, to a directory the runtime
makes; a pre-existing closID directory must already hold them (compared, never overwritten),
and without any schema a closID must exist. `enableMonitoring` makes the MON group
`mon_groups/<container-id>` under it, removed on delete. No resctrl mount is an error naming
linux.intelRdt; a config without intelRdt never touches resctrl.

Split so the rules are testable on a plain directory: `check` and `schema_lines` are pure,
`Rdt.apply` works on any root directory; only `find_mount` reads the real mount table.
"""

from __future__ import annotations

import os

from pyouki.errors import ConfigError, PyoukiError, reason

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyouki.state import Container

FIELD = "linux.intelRdt"
_RESERVED = ("info", "mon_groups", "mon_data")  # resctrl's own entries in a group directory


def find_mount(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The mount point of the resctrl filesystem in the runtime's mount namespace, or None."""
    try:
        with open(mountinfo) as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-") if "-" in fields else -1
                if sep > 0 and len(fields) > sep + 1 and fields[sep + 1] == "resctrl":
                    return fields[4].replace("\\040", " ")
    except OSError:
        return None
    return None


def check(rdt: dict) -> None:
    """Types and the spec's rules on values: MB: prefix, no newlines, a closID that is one name."""
    if not isinstance(rdt, dict):
        raise ConfigError(FIELD, "must be an object")
    clos = rdt.get("closID")
    if clos is not None:
        if not isinstance(clos, str):
            raise ConfigError(f"{FIELD}.closID", "must be a string")
        if clos != "/" and (not clos or "/" in clos or clos in (".", "..", *_RESERVED) or "\n" in clos):
            raise ConfigError(f"{FIELD}.closID", f"{clos!r} is not a resctrl group name (or / for the default)")
    for key in ("l3CacheSchema", "memBwSchema"):
        value = rdt.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ConfigError(f"{FIELD}.{key}", "must be a string")
        if "\n" in value:
            raise ConfigError(f"{FIELD}.{key}", "must not contain newlines")
    mb = rdt.get("memBwSchema")
    if mb and not mb.startswith("MB:"):
        raise ConfigError(f"{FIELD}.memBwSchema", f"{mb!r} does not start with MB:")
    schemata = rdt.get("schemata")
    if schemata is not None:
        if not isinstance(schemata, list):
            raise ConfigError(f"{FIELD}.schemata", "must be an array")
        for i, line in enumerate(schemata):
            if not isinstance(line, str):
                raise ConfigError(f"{FIELD}.schemata[{i}]", "must be a string")
            if "\n" in line:
                raise ConfigError(f"{FIELD}.schemata[{i}]", "must not contain newlines")
    monitoring = rdt.get("enableMonitoring")
    if monitoring is not None and not isinstance(monitoring, bool):
        raise ConfigError(f"{FIELD}.enableMonitoring", "must be a boolean")
    for key in ("enableCMT", "enableMBM"):
        if rdt.get(key):
            raise ConfigError(f"{FIELD}.{key}", "replaced by enableMonitoring in runtime-spec 1.3: use that")


def schema_lines(rdt: dict) -> list[str]:
    """The lines for the schemata file, in the spec's order: l3CacheSchema, memBwSchema, schemata."""
    lines = [rdt[k] for k in ("l3CacheSchema", "memBwSchema") if rdt.get(k)]
    lines += [line for line in rdt.get("schemata") or [] if line]
    return lines


def _parse_line(line: str) -> tuple[str, dict[str, str]]:
    """`L3:0=7f0;1=1f` -> ("L3", {"0": "7f0", "1": "1f"}), values normalised (hex masks, numbers)."""
    res, _, rest = line.strip().partition(":")
    domains = {}
    for part in rest.split(";"):
        dom, _, val = part.strip().partition("=")
        if dom.strip():
            val = val.strip().lower()
            try:  # cache bitmasks are hex, MB percentages or MBps decimal: compare as numbers
                val = str(int(val, 10 if res.strip().upper().startswith("MB") else 16))
            except ValueError:
                pass
            domains[dom.strip()] = val
    return res.strip().upper(), domains


def mismatches(existing: str, lines: list[str]) -> list[str]:
    """The wanted lines that the schemata file's text does not hold (each domain's value compared)."""
    have: dict[str, dict[str, str]] = {}
    for line in existing.splitlines():
        if line.strip():
            res, domains = _parse_line(line)
            have.setdefault(res, {}).update(domains)
    wrong = []
    for line in lines:
        res, domains = _parse_line(line)
        current = have.get(res)
        if current is None or any(current.get(d) != v for d, v in domains.items()):
            wrong.append(line)
    return wrong


def _write(path: str, data: str, field: str) -> None:
    try:
        with open(path, "w") as f:  # O_CREAT|O_TRUNC as runc: the kernfs file exists, a test dir's may not
            f.write(data)
    except OSError as e:
        raise ConfigError(field, f"failed to write {data.strip()!r} to {path}: "
                                 f"{reason(e)}") from None


class Rdt:
    """The container's resctrl group (and MON group): what create made, so delete undoes just that."""

    def __init__(self, group: str, created: bool = False, mon: str | None = None) -> None:
        self.group = group
        self.created = created
        self.mon = mon

    @classmethod
    def apply(cls, root: str, rdt: dict, container_id: str) -> Rdt:
        """Make or check the group under root (a resctrl mount), its schemata and MON group."""
        check(rdt)
        clos = rdt.get("closID")
        lines = schema_lines(rdt)
        group = root if clos == "/" else os.path.join(root, clos or container_id)
        self = cls(group)
        try:
            if not os.path.isdir(group):
                if clos and not lines:
                    raise ConfigError(f"{FIELD}.closID", f"no resctrl group {group}: without a schema, closID "
                                                         f"must name an existing one")
                try:
                    os.mkdir(group)
                    self.created = True
                except OSError as e:
                    raise ConfigError(FIELD, f"failed to create the resctrl group {group}: "
                                             f"{reason(e)}") from None
            if lines:
                if self.created:
                    _write(os.path.join(group, "schemata"), "\n".join(lines) + "\n", FIELD)
                else:
                    # a group that exists belongs to someone: check it holds the schemas, never change it
                    try:
                        with open(os.path.join(group, "schemata")) as f:
                            existing = f.read()
                    except OSError as e:
                        raise ConfigError(FIELD, f"failed to read {group}/schemata: "
                                                 f"{reason(e)}") from None
                    wrong = mismatches(existing, lines)
                    if wrong:
                        raise ConfigError(FIELD, f"the existing resctrl group {group} does not match "
                                                 f"{wrong[0]!r}")
            if rdt.get("enableMonitoring"):
                mon = os.path.join(group, "mon_groups", container_id)
                try:
                    os.mkdir(mon)
                except OSError as e:
                    raise ConfigError(f"{FIELD}.enableMonitoring", f"failed to create the MON group {mon}: "
                                                                   f"{reason(e)}") from None
                self.mon = mon
        except BaseException:
            self.remove()
            raise
        return self

    def add_task(self, pid: int) -> None:
        """Put pid in the group (its children inherit it), then in the MON group, which the kernel
        accepts only for a task of the parent group."""
        _write(os.path.join(self.group, "tasks"), str(pid), FIELD)
        if self.mon:
            _write(os.path.join(self.mon, "tasks"), str(pid), f"{FIELD}.enableMonitoring")

    def remove(self) -> None:
        """Remove the MON group, and the group when this runtime created it; idempotent."""
        for d, ours in ((self.mon, True), (self.group, self.created)):
            if d and ours:
                try:
                    os.rmdir(d)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    raise PyoukiError(f"failed to remove the resctrl group {d}: {reason(e)}") from None

    def to_state(self) -> dict:
        """What the container's record keeps for delete and exec."""
        return {"group": self.group, "created": self.created, "mon": self.mon}

    @classmethod
    def from_state(cls, d: dict) -> Rdt:
        """Rebuild from to_state()."""
        return cls(d["group"], bool(d.get("created")), d.get("mon"))


def prepare(config: dict, container_id: str) -> Rdt | None:
    """For create: the container's group made and checked (None without linux.intelRdt).

    The spec's error when no resctrl filesystem is mounted in the runtime's mount namespace.
    """
    rdt = (config.get("linux") or {}).get("intelRdt")
    if rdt is None:
        return None
    check(rdt)
    root = find_mount()
    if root is None:
        raise ConfigError(FIELD, "no resctrl filesystem is mounted (Intel RDT needs a CPU and kernel with "
                                 "it and `mount -t resctrl resctrl /sys/fs/resctrl`)")
    return Rdt.apply(root, rdt, container_id)


def update_container(container: Container, schemas: dict) -> None:
    """`update --l3-cache-schema/--mem-bw-schema`: rewrite the schemata of the container's own group,
    or (as runc) give a container created without intelRdt a group of its own with them."""
    flag = "--l3-cache-schema" if schemas.get("l3CacheSchema") else "--mem-bw-schema"
    root = find_mount()
    if root is None:
        raise PyoukiError(f"{flag}: no resctrl filesystem is mounted (Intel RDT needs a CPU and kernel with it)")
    state = container.record.get("intel_rdt")
    if state:
        rdt = Rdt.from_state(state)
        if not rdt.created:
            raise PyoukiError(f"{flag}: the container is in the resctrl group {rdt.group} of its closID, which "
                              f"it does not own: change that group's schemata instead")
        _write(os.path.join(rdt.group, "schemata"), "\n".join(schema_lines(schemas)) + "\n", FIELD)
        return
    rdt = Rdt.apply(root, schemas, container.id)
    try:
        rdt.add_task(container.pid)
        container.record["intel_rdt"] = rdt.to_state()
        container.save()
    except BaseException:
        rdt.remove()
        raise
