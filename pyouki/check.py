"""`pyouki check`: is this machine ready for containers of the calling user (or of root, --rootful)?

Each check reads a file or makes a syscall (no subprocess) and gives one line: its name, its
status, what it found and, on failure, the exact command that fixes it. Statuses:

* ok:   fine;
* fail: a container of this kind cannot run, or cannot have resource limits;
* warn: pyouki runs, but something engines use (podman's fuse-overlayfs, slirp4netns, a full
  subordinate range) is missing;
* info: a fact worth knowing (the security modules: pyouki applies no labels).

The exit status is 0 when nothing failed: a container can run with resource limits.
"""

from __future__ import annotations

import os
import stat

# what a container needs to have limits: memory.max, pids.max, cpu.max
LIMIT_CONTROLLERS = ("cpu", "memory", "pids")
MIN_KERNEL = (5, 6)  # openat2, which resolves every mount destination inside the rootfs
GOOD_KERNEL = (5, 12)  # mount_setattr, for recursive mount options (rro, rnosuid...)
SUBID_SIZE = 65536  # what rootless podman and images with system users expect
DELEGATE_DROPIN = "/etc/systemd/system/user@.service.d/delegate.conf"
CAP_SETGID, CAP_SETUID = 6, 7
# the checks about limits only: when nothing else fails, containers still run
CGROUP_CHECKS = frozenset({"cgroup version", "cgroup v2 controllers", "cgroup controllers", "systemd user manager",
                           "delegated controllers"})


class Result:
    """One line of the report."""

    __slots__ = ("name", "status", "detail", "fix")

    def __init__(self, name: str, status: str, detail: str, fix: str = "") -> None:
        self.name, self.status, self.detail, self.fix = name, status, detail, fix

    def to_dict(self) -> dict:
        """The JSON form."""
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


class Caller:
    """Who the checks are for: the calling user (rootless) or root (--rootful)."""

    def __init__(self, rootful: bool) -> None:
        import pwd

        from pyouki.dbus_native.address import host_uid

        self.rootful = rootful
        self.uid = host_uid()  # inside a user namespace: the uid the host (and its files) know us by
        try:
            pw = pwd.getpwuid(self.uid)
            self.name, self.gid = pw.pw_name, pw.pw_gid
        except KeyError:
            self.name, self.gid = str(self.uid), os.getegid()
        # commands that need root are written with sudo for a user (and for root in a user
        # namespace, which is no root to the host), bare for root
        self.sudo = "" if os.geteuid() == 0 and self.uid == 0 else "sudo "


def run_checks(rootful: bool = False) -> tuple[Caller, list[Result]]:
    """Every check, in report order."""
    caller = Caller(rootful)
    results: list[Result] = []
    if rootful:
        results.append(_root(caller))
    results.append(_kernel())
    cgroup_mode, v2_mount = _cgroup_layout()
    results.append(_cgroup_mode(caller, cgroup_mode, v2_mount))
    if rootful:
        results.append(_rootful_controllers(cgroup_mode))
        results.append(_system_manager(caller))
    else:
        results += _userns_sysctls(caller)
        results.append(_userns_probe(caller))
        results += [_subids(caller, "/etc/subuid"), _subids(caller, "/etc/subgid")]
        results += [_helper(caller, "newuidmap", CAP_SETUID), _helper(caller, "newgidmap", CAP_SETGID)]
        results.append(_runtime_dir(caller))
        results.append(_v2_controllers(caller, cgroup_mode, v2_mount))
        results += _user_manager_and_delegation(caller, cgroup_mode, v2_mount)
    results += [_device(caller, "/dev/fuse", "fuse", "fuse-overlayfs, podman's rootless storage"),
                _device(caller, "/dev/net/tun", "tun", "slirp4netns and pasta, podman's rootless network")]
    results += _security_modules()
    return caller, results


def ready(results: list[Result]) -> bool:
    """True when no check failed."""
    return not any(r.status == "fail" for r in results)


# -- identity, kernel, cgroups ------------------------------------------------------------------


def _root(caller: Caller) -> Result:
    if os.geteuid() == 0 and caller.uid == 0:
        return Result("root", "ok", "running as root")
    return Result("root", "fail", f"running as {caller.name} (uid {caller.uid}), not as root",
                  "sudo pyouki check --rootful")


def _kernel() -> Result:
    release = os.uname().release
    numbers = []
    for part in release.split("-")[0].split(".")[:2]:
        numbers.append(int(part) if part.isdigit() else 0)
    version = tuple(numbers + [0] * (2 - len(numbers)))
    if version < MIN_KERNEL:
        return Result("kernel", "fail", f"Linux {release}: pyouki needs 5.6 or later (openat2)",
                      "upgrade the kernel")
    if version < GOOD_KERNEL:
        return Result("kernel", "warn", f"Linux {release}: recursive mount options (rro...) need 5.12 "
                      "(mount_setattr)", "upgrade the kernel")
    return Result("kernel", "ok", f"Linux {release}")


def _cgroup_layout() -> tuple[str, str]:
    """The host's cgroup mode and where the cgroup2 hierarchy is mounted ("" when it is not)."""
    from pyouki.cgroups.common import CGROUP_ROOT, mode_from_mounts, read_mounts

    mounts = read_mounts()
    mode = mode_from_mounts(mounts)
    v2 = [m.mountpoint for m in mounts if m.fstype == "cgroup2"]
    return mode, (CGROUP_ROOT if mode == "unified" else (v2[0] if v2 else ""))


# cgroup v2 at /sys/fs/cgroup, and no controller held back by a cgroup v1 hierarchy
_UNIFIED_FIX = ("sed -i 's/^GRUB_CMDLINE_LINUX=\"/&systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all /' "
                "/etc/default/grub && update-grub && reboot")


def _sudo_chain(caller: Caller, command: str) -> str:
    return " && ".join(caller.sudo + part for part in command.split(" && "))


def _cgroup_mode(caller: Caller, mode: str, v2_mount: str) -> Result:
    names = {"unified": "cgroup v2 (unified)", "hybrid": f"cgroup v1 hybrid (cgroup2 at {v2_mount})",
             "v1": "cgroup v1"}
    detail = names.get(mode, mode)
    if mode == "unified" or caller.rootful:
        return Result("cgroup version", "ok", detail)
    return Result("cgroup version", "fail", f"{detail}: a rootless container gets limits only from cgroup v2 "
                  "delegation", _sudo_chain(caller, _UNIFIED_FIX))


def _controllers(directory: str) -> list[str] | None:
    try:
        with open(os.path.join(directory, "cgroup.controllers")) as f:
            return f.read().split()
    except OSError:
        return None


def _rootful_controllers(mode: str) -> Result:
    from pyouki.cgroups.common import CGROUP_ROOT, read_mounts

    if mode == "unified":
        have = _controllers(CGROUP_ROOT) or []
        where = f"{CGROUP_ROOT}/cgroup.controllers"
    else:
        have = sorted({c for m in read_mounts() if m.fstype == "cgroup" for c in m.controllers
                       if not c.startswith("name=")})
        where = "cgroup v1 hierarchies"
    missing = [c for c in LIMIT_CONTROLLERS if c not in have]
    if missing:
        return Result("cgroup controllers", "fail", f"{where}: {' '.join(have) or 'none'}; missing "
                      f"{' '.join(missing)}", "enable the controllers in the kernel (cgroup_enable=memory)")
    return Result("cgroup controllers", "ok", f"{where}: {' '.join(have)}")


def _v2_controllers(caller: Caller, mode: str, v2_mount: str) -> Result:
    """What the cgroup2 hierarchy offers at all (the user manager can delegate no more than that)."""
    if not v2_mount:
        return Result("cgroup v2 controllers", "fail", "no cgroup2 hierarchy is mounted",
                      _sudo_chain(caller, _UNIFIED_FIX))
    have = _controllers(v2_mount) or []
    missing = [c for c in LIMIT_CONTROLLERS if c not in have]
    detail = f"{v2_mount}: {' '.join(have) or 'none'}"
    if not missing:
        return Result("cgroup v2 controllers", "ok", detail)
    why = " (bound to cgroup v1)" if mode != "unified" else ""
    return Result("cgroup v2 controllers", "fail", f"{detail}; missing {' '.join(missing)}{why}",
                  _sudo_chain(caller, _UNIFIED_FIX))


# -- user namespaces ----------------------------------------------------------------------------


def _read_sysctl(name: str) -> str | None:
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return f.read().strip()
    except OSError:
        return None


def _sysctl_fix(caller: Caller, name: str, value: str) -> str:
    return (f"{caller.sudo}sysctl -w {name}={value} && echo '{name} = {value}' | "
            f"{caller.sudo}tee /etc/sysctl.d/90-pyouki-userns.conf")


def _userns_sysctls(caller: Caller) -> list[Result]:
    results = []
    value = _read_sysctl("user.max_user_namespaces")
    if value is not None:
        if value.isdigit() and int(value) > 0:
            results.append(Result("user.max_user_namespaces", "ok", value))
        else:
            results.append(Result("user.max_user_namespaces", "fail", f"{value}: no user namespace may be created",
                                  _sysctl_fix(caller, "user.max_user_namespaces", "28633")))
    # Debian's and Ubuntu's older kernels: a switch for unprivileged user namespaces
    value = _read_sysctl("kernel.unprivileged_userns_clone")
    if value is not None:
        if value == "1":
            results.append(Result("kernel.unprivileged_userns_clone", "ok", value))
        else:
            results.append(Result("kernel.unprivileged_userns_clone", "fail", f"{value}: unprivileged users may not "
                                  "create user namespaces", _sysctl_fix(caller, "kernel.unprivileged_userns_clone",
                                                                        "1")))
    # Ubuntu 23.10 and later: AppArmor takes every capability in an unconfined process's user namespace
    value = _read_sysctl("kernel.apparmor_restrict_unprivileged_userns")
    if value is not None:
        if value == "0":
            results.append(Result("kernel.apparmor_restrict_unprivileged_userns", "ok", value))
        else:
            results.append(Result("kernel.apparmor_restrict_unprivileged_userns", "fail",
                                  f"{value}: AppArmor denies capabilities in unprivileged user namespaces",
                                  _sysctl_fix(caller, "kernel.apparmor_restrict_unprivileged_userns", "0")))
    return results


def _userns_probe(caller: Caller) -> Result:
    """Create a user namespace and, in it, a mount namespace (which AppArmor's restriction denies)."""
    from pyouki import syscalls as sc

    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            sc.unshare(sc.CLONE_NEWUSER)
            try:
                sc.unshare(sc.CLONE_NEWNS)
            except OSError as e:
                code = 100 + (e.errno or 0)
        except OSError as e:
            code = e.errno or 1
        os._exit(min(code, 255))
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return Result("user namespaces", "ok", "an unprivileged user namespace can be created and used")
    import errno as errnos

    if code >= 100:
        name = errnos.errorcode.get(code - 100, str(code - 100))
        return Result("user namespaces", "fail", f"created, but without capabilities inside ({name}): an LSM "
                      "restricts them", _sysctl_fix(caller, "kernel.apparmor_restrict_unprivileged_userns", "0"))
    name = errnos.errorcode.get(code, str(code))
    return Result("user namespaces", "fail", f"unshare(CLONE_NEWUSER) failed ({name})",
                  _sysctl_fix(caller, "user.max_user_namespaces", "28633"))


def _subids(caller: Caller, path: str) -> Result:
    from pyouki.userns import subids

    what = "subordinate uids" if path.endswith("subuid") else "subordinate gids"
    ranges = subids.ranges(path, caller.name, caller.uid)
    fix = caller.sudo + subids.usermod_fix(caller.name)
    if not ranges:
        return Result(what, "fail", f"{path} has no entry for {caller.name}", fix)
    total = sum(count for _, count in ranges)
    listed = ", ".join(f"{start}-{start + count - 1}" for start, count in ranges)
    if total < SUBID_SIZE:
        return Result(what, "warn", f"{path}: {listed} ({total} ids; podman and most images expect {SUBID_SIZE})",
                      fix)
    return Result(what, "ok", f"{path}: {listed} ({total} ids)")


def _file_caps(path: str) -> int:
    """The permitted bits of a file's capabilities (security.capability), 0 without any."""
    try:
        data = os.getxattr(path, "security.capability")
    except OSError:
        return 0
    if len(data) < 12:
        return 0
    low = int.from_bytes(data[4:8], "little")
    high = int.from_bytes(data[12:16], "little") if len(data) >= 20 else 0
    return low | (high << 32)


def _install_fix(caller: Caller) -> str:
    """The command that installs newuidmap/newgidmap on this distribution."""
    ids = set()
    try:
        with open("/etc/os-release") as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                if key in ("ID", "ID_LIKE"):
                    ids.update(value.strip('"').split())
    except OSError:
        pass
    for family, command in (("debian", "apt-get install -y uidmap"), ("ubuntu", "apt-get install -y uidmap"),
                            ("fedora", "dnf install -y shadow-utils"), ("rhel", "dnf install -y shadow-utils"),
                            ("suse", "zypper install -y shadow"), ("arch", "pacman -S --noconfirm shadow"),
                            ("alpine", "apk add shadow-uidmap")):
        if family in ids:
            return caller.sudo + command
    return "install newuidmap and newgidmap (shadow's uidmap tools) with the system's package manager"


def _helper(caller: Caller, name: str, cap: int) -> Result:
    from pyouki.errors import PyoukiError
    from pyouki.userns.idmap import find_helper

    try:
        path = find_helper(name)
    except PyoukiError:
        return Result(name, "fail", "not found (needed to map subordinate ids)", _install_fix(caller))
    st = os.stat(path)
    if st.st_uid == 0 and st.st_mode & stat.S_ISUID:
        return Result(name, "ok", f"{path}, setuid root")
    if _file_caps(path) & (1 << cap):
        return Result(name, "ok", f"{path}, file capability {'cap_setuid' if cap == CAP_SETUID else 'cap_setgid'}")
    capname = "cap_setuid" if cap == CAP_SETUID else "cap_setgid"
    return Result(name, "fail", f"{path} is neither setuid root nor has {capname}",
                  f"{caller.sudo}chown root {path} && {caller.sudo}chmod u+s {path}")


def _runtime_dir(caller: Caller) -> Result:
    name = "XDG_RUNTIME_DIR"
    value = os.environ.get(name, "")
    default = f"/run/user/{caller.uid}"
    create = (f"{caller.sudo}install -d -m 0700 -o {caller.name} -g {caller.gid} {default} "
              f"&& export XDG_RUNTIME_DIR={default}")
    if not value:
        try:
            st = os.stat(default)
            usable = st.st_uid == caller.uid and not st.st_mode & 0o077
        except OSError:
            usable = False
        return Result(name, "fail", "not set: state would go to /tmp, and the user manager cannot be found",
                      f"export XDG_RUNTIME_DIR={default}" if usable else create)
    try:
        st = os.stat(value)
    except OSError as e:
        from pyouki.errors import reason

        return Result(name, "fail", f"{value}: {reason(e)}", create)
    if not stat.S_ISDIR(st.st_mode):
        return Result(name, "fail", f"{value} is not a directory", create)
    if st.st_uid != caller.uid:
        return Result(name, "fail", f"{value} is owned by uid {st.st_uid}, not by {caller.name}",
                      f"{caller.sudo}chown {caller.name} {value}")
    if st.st_mode & 0o077:
        return Result(name, "fail", f"{value} has mode {stat.S_IMODE(st.st_mode):04o}, not 0700",
                      f"chmod 0700 {value}")
    return Result(name, "ok", f"{value} (0700, owned by {caller.name})")


# -- systemd and delegation ---------------------------------------------------------------------


def _systemd_is_init() -> bool:
    return os.path.isdir("/run/systemd/system")  # what sd_booted() looks at


def _connect(user: bool) -> tuple[object | None, str]:
    """A SystemdManager or None, and what went wrong."""
    from pyouki.errors import PyoukiError

    try:
        from pyouki.dbus_native.systemd import SystemdManager

        return SystemdManager.connect(user=user, timeout=2.0), ""
    except ImportError as e:
        return None, f"the D-Bus client cannot be loaded ({e})"
    except PyoukiError as e:
        return None, str(e)


def _system_manager(caller: Caller) -> Result:
    """Only --systemd-cgroup needs it: without it, a warning."""
    if not _systemd_is_init():
        return Result("systemd system manager", "warn", "PID 1 is not systemd: there is no system manager "
                      "(--systemd-cgroup needs one)")
    manager, error = _connect(user=False)
    if manager is None:
        return Result("systemd system manager", "warn", f"not reachable: {error}",
                      f"{caller.sudo}systemctl start dbus.socket")
    try:
        version = manager.manager_property("Version")  # type: ignore[attr-defined]
    finally:
        manager.close()  # type: ignore[attr-defined]
    return Result("systemd system manager", "ok", f"systemd {version} over D-Bus (--systemd-cgroup works)")


def _user_manager_and_delegation(caller: Caller, mode: str, v2_mount: str) -> list[Result]:
    """The user manager over D-Bus, and the controllers of the cgroup a rootless container would get."""
    sudo = caller.sudo
    linger = f"{sudo}loginctl enable-linger {caller.name}"
    if mode != "unified":
        delegate = _sudo_chain(caller, _UNIFIED_FIX)  # nothing delegated on cgroup v1 can hold limits
    elif _systemd_is_init():
        delegate = (f"{sudo}mkdir -p {os.path.dirname(DELEGATE_DROPIN)} && printf '[Service]\\nDelegate=cpu cpuset "
                    f"io memory pids\\n' | {sudo}tee {DELEGATE_DROPIN} && {sudo}systemctl daemon-reload")
    else:
        # no systemd to delegate: a cgroup of the user's own, with the shell in it
        own = f"{v2_mount}/{caller.name}"
        delegate = (f"echo +cpu +memory +pids | {sudo}tee {v2_mount}/cgroup.subtree_control && {sudo}mkdir -p {own} "
                    f"&& {sudo}chown {caller.name} {own} {own}/cgroup.procs {own}/cgroup.subtree_control "
                    f"&& echo $$ > {own}/cgroup.procs")
    results = []
    manager, error = _connect(user=True)
    delegated: tuple[str, list[str] | None] | None = None
    if manager is None:
        if not _systemd_is_init():
            # nothing to start: only --systemd-cgroup needs it, limits can come from a delegated cgroup
            user_manager = Result("systemd user manager", "warn", "PID 1 is not systemd: there is no user manager "
                                  "(--systemd-cgroup needs one)")
        else:
            user_manager = Result("systemd user manager", "fail", f"not reachable: {error}", linger)
    else:
        try:
            version = manager.manager_property("Version")  # type: ignore[attr-defined]
            group = str(manager.manager_property("ControlGroup"))  # type: ignore[attr-defined]
        except Exception as e:  # noqa: BLE001 - any answer but the expected one is a failed check
            version, group = None, ""
            error = str(e)
        finally:
            manager.close()  # type: ignore[attr-defined]
        if version is None:
            user_manager = Result("systemd user manager", "fail", f"connected, but it does not answer: {error}", linger)
        else:
            address = os.environ.get("DBUS_SESSION_BUS_ADDRESS") or "$XDG_RUNTIME_DIR/bus"
            user_manager = Result("systemd user manager", "ok", f"systemd {version} at {address}, cgroup {group}")
            if v2_mount and group:
                path = os.path.join(v2_mount, group.lstrip("/"))
                delegated = (path, _controllers(path))
    results.append(user_manager)
    if delegated is None:
        delegated = _own_delegated_cgroup(v2_mount)
        if delegated is not None and user_manager.status == "fail":
            user_manager.status = "warn"  # a delegated cgroup of our own gives limits without it
    if delegated is None:
        results.append(Result("delegated controllers", "fail", "no cgroup is delegated to this user",
                              linger if _systemd_is_init() and mode == "unified" else delegate))
        return results
    path, have = delegated
    if have is None:
        results.append(Result("delegated controllers", "fail", f"{path}/cgroup.controllers cannot be read", delegate))
        return results
    missing = [c for c in LIMIT_CONTROLLERS if c not in have]
    detail = f"{path}: {' '.join(have) or 'none'}"
    if missing:
        results.append(Result("delegated controllers", "fail", f"{detail}; missing {' '.join(missing)}", delegate))
    else:
        results.append(Result("delegated controllers", "ok", detail))
    return results


def _own_delegated_cgroup(v2_mount: str) -> tuple[str, list[str] | None] | None:
    """Our own cgroup when it is delegated to us (writable), as pyouki would use it without a user manager."""
    if not v2_mount:
        return None
    from pyouki.cgroups.common import own_cgroups

    path = os.path.join(v2_mount, own_cgroups().get("", "/").lstrip("/")).rstrip("/")
    if os.access(path, os.W_OK) and os.access(os.path.join(path, "cgroup.procs"), os.W_OK):
        return path, _controllers(path)
    return None


# -- devices and security modules ---------------------------------------------------------------


def _device(caller: Caller, path: str, module: str, users: str) -> Result:
    name = path
    try:
        st = os.stat(path)
    except OSError:
        return Result(name, "warn", f"missing: {users} cannot work", f"{caller.sudo}modprobe {module}")
    if not stat.S_ISCHR(st.st_mode):
        return Result(name, "warn", "not a character device", f"{caller.sudo}modprobe {module}")
    if not os.access(path, os.R_OK | os.W_OK):
        return Result(name, "warn", f"mode {stat.S_IMODE(st.st_mode):04o}: not usable by {caller.name}; "
                      f"{users} cannot work", f"{caller.sudo}chmod 0666 {path}")
    return Result(name, "ok", f"usable, for {users}")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _security_modules() -> list[Result]:
    lsm = _read("/sys/kernel/security/lsm")
    apparmor = _read("/sys/module/apparmor/parameters/enabled")
    if apparmor == "Y" or (lsm and "apparmor" in lsm.split(",")):
        profiles = _read("/sys/kernel/security/apparmor/profiles")
        count = f", {len(profiles.splitlines())} profiles loaded" if profiles else ""
        aa = Result("apparmor", "info", f"enabled{count}")
    else:
        aa = Result("apparmor", "info", "not enabled")
    enforce = _read("/sys/fs/selinux/enforce")
    if enforce is None:
        se = Result("selinux", "info", "not enabled")
    else:
        se = Result("selinux", "info", "enforcing" if enforce == "1" else "permissive")
    return [aa, se]


# -- output -------------------------------------------------------------------------------------


def report(rootful: bool | None = None, fmt: str = "text") -> tuple[str, int]:
    """The report as text or JSON, and the exit status (0 when ready).

    By default the checks are for the caller's kind of container: rootful for real root, rootless
    for anyone else (root in a user namespace included).
    """
    if rootful is None:
        from pyouki.state import in_user_namespace

        rootful = os.geteuid() == 0 and not in_user_namespace()
    caller, results = run_checks(rootful)
    ok = ready(results)
    kind = "rootful" if rootful else "rootless"
    failed = [r.name for r in results if r.status == "fail"]
    verdict = (f"ready: a {kind} container can run with resource limits" if ok
               else f"not ready for {kind} containers with resource limits: {len(failed)} failed "
               f"({', '.join(failed)})")
    if failed and set(failed) <= CGROUP_CHECKS:
        verdict += f"; {kind} containers run, without limits"
    if fmt == "json":
        from pyouki.jsonout import dumps

        doc = {"user": caller.name, "uid": caller.uid, "rootful": rootful, "ready": ok, "verdict": verdict,
               "checks": [r.to_dict() for r in results]}
        return dumps(doc, indent=True) + "\n", 0 if ok else 1
    width = max(len(r.name) for r in results)
    lines = [f"pyouki check for {caller.name} (uid {caller.uid}), {kind}"]
    for r in results:
        lines.append(f"{r.status.upper() if r.status == 'fail' else r.status:<5} {r.name:<{width}}  {r.detail}")
        if r.fix and r.status in ("fail", "warn"):
            lines.append(f"{'':<5} {'':<{width}}  fix: {r.fix}")
    lines.append(verdict)
    return "\n".join(lines) + "\n", 0 if ok else 1
