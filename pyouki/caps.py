"""Linux capabilities: names to numbers, and applying the five sets of `process.capabilities`."""

from __future__ import annotations

from pyouki.errors import ConfigError, PyoukiError, reason

CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)


def last_cap() -> int:
    """The highest capability number this kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            return int(f.read())
    except OSError:
        return len(CAPABILITIES) - 1


def known_cap(name: str, field: str) -> int | None:
    """The number of a capability name such as CAP_KILL (or KILL), None when pyouki does not know
    it; a ConfigError naming field when it is not a string."""
    if not isinstance(name, str):
        raise ConfigError(field, "must be a string")
    upper = name.upper()
    if not upper.startswith("CAP_"):
        upper = "CAP_" + upper
    try:
        return CAPABILITIES.index(upper)
    except ValueError:
        return None


def cap_number(name: str, field: str) -> int:
    """The number of a capability name, or a ConfigError naming field."""
    number = known_cap(name, field)
    if number is None:
        raise ConfigError(field, f"unknown capability {name!r}")
    return number


class CapabilitySets:
    """The five sets resolved to numbers, limited to what this kernel supports.

    Unknown names and capabilities this kernel lacks are left out with one warning, as runc does
    (the runtime spec: a runtime SHOULD NOT fail on them, and SHOULD log a warning).
    """

    def __init__(self, caps: dict | None) -> None:
        # an empty object (podman's --cap-drop all) means no capabilities at all, bounding set
        # included; only a missing one leaves the bounding set alone
        self.present = caps is not None
        caps = caps or {}
        top = last_cap()

        ignored: set[str] = set()

        def numbers(key: str) -> list[int]:
            nums = set()
            for i, name in enumerate(caps.get(key) or []):
                n = known_cap(name, f"process.capabilities.{key}[{i}]")
                if n is None or n > top:
                    ignored.add(name)
                else:
                    nums.add(n)
            return sorted(nums)

        self.bounding = numbers("bounding")
        self.effective = numbers("effective")
        self.permitted = numbers("permitted")
        self.inheritable = numbers("inheritable")
        self.ambient = numbers("ambient")
        self.all = list(range(top + 1))
        if ignored:
            from pyouki import log

            log.warning(f"ignoring unknown or unavailable capabilities: [{' '.join(sorted(ignored))}]")

    def drop_bounding(self) -> None:
        """Drop every capability not in the bounding set (needs CAP_SETPCAP, so do it first)."""
        import prctl

        keep = set(self.bounding)
        for cap in self.all:
            if cap not in keep:
                try:
                    prctl.capbset_drop(cap)
                except OSError as e:
                    raise PyoukiError(
                        f"failed to drop {CAPABILITIES[cap]} from the bounding set: {reason(e)}"
                    ) from None

    def apply(self) -> None:
        """Set effective, permitted, inheritable, then raise the ambient ones."""
        import _prctl

        from pyouki import syscalls

        eff, perm, inh = set(self.effective), set(self.permitted), set(self.inheritable)
        try:
            _prctl.set_caps(
                sorted(eff), sorted(perm), sorted(inh),
                [c for c in self.all if c not in eff],
                [c for c in self.all if c not in perm],
                [c for c in self.all if c not in inh],
            )
        except OSError as e:
            raise PyoukiError(f"failed to set process capabilities: {reason(e)}") from None
        syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_CLEAR_ALL)
        for cap in self.ambient:
            try:
                syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_RAISE, cap)
            except OSError:
                # runc too ignores ambient capabilities that are not permitted and inheritable
                pass
