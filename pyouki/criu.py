"""`checkpoint` and `restore`: a running container saved to disk and brought back, with criu.

pyouki drives criu's command line (Debian's `criu`, 3.x), not its RPC: no protobuf needed, and
every option runc sends through the RPC has its command-line twin. What runc 1.1's
libcontainer does, pyouki does too:

- dump: criu seizes the container's init and everything under it (its namespaces: pid, mount,
  net, uts, ipc, cgroup), frozen through the container's cgroup freezer. The config's bind
  mounts, the files of linux.maskedPaths (binds of /dev/null) and linux.devices bound from
  the host are external mounts; a network or pid namespace joined by path is external too.
  The links of init's stdio go to `descriptors.json` in the image directory, as with runc.
  Without --leave-running (or --pre-dump) criu ends the processes and the container is
  deleted, poststop hooks included, so `restore` can bring it back under the same id.
- restore: a new container from the bundle (its config, its cgroup, with linux.resources
  applied to criu itself before it forks anything), the rootfs bound at a private mount point
  for criu's --root, the external mounts mapped to their sources again, namespaces joined by
  path joined again (net and pid through --inherit-fd, others through --join-ns), and the
  pipes of init's old stdio replaced by restore's own stdio. The restored init is a child of
  pyouki (--restore-sibling): in the foreground pyouki waits for it as `run` does.

criu needs root. The errors quote criu's own first error line and name its log file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from pyouki import log
from pyouki.enginewords import EXISTS, NOT_RUNNING
from pyouki.errors import ContainerError, PyoukiError, reason

DESCRIPTORS = "descriptors.json"  # runc's name: engines (podman) copy image directories around
DUMP_LOG = "dump.log"
RESTORE_LOG = "restore.log"
HOOK_ERROR = "criu-hook.err"  # a failed restore hook's message, for restore to print
CGROUP_MODES = ("soft", "full", "strict", "ignore")
_EMPTY_NS = {"network": "net"}  # runc accepts only network for --empty-ns


class CriuOptions:
    """runc's checkpoint/restore flags, as given (paths made absolute)."""

    def __init__(self, options: dict) -> None:
        cwd = os.getcwd()
        self.image_path = os.path.abspath(options.get("image_path") or os.path.join(cwd, "checkpoint"))
        work = options.get("work_path")
        self.work_path = os.path.abspath(work) if work else None
        self.parent_path: str | None = options.get("parent_path") or None
        self.leave_running = bool(options.get("leave_running"))
        self.pre_dump = bool(options.get("pre_dump"))
        self.lazy_pages = bool(options.get("lazy_pages"))
        self.status_fd = options.get("status_fd")
        self.page_server: str | None = options.get("page_server") or None
        self.auto_dedup = bool(options.get("auto_dedup"))
        self.switches = [name for name, key in (("--tcp-established", "tcp_established"),
                                                 ("--ext-unix-sk", "ext_unix_sk"), ("--shell-job", "shell_job"),
                                                 ("--file-locks", "file_locks"))
                         if options.get(key)]
        mode = options.get("manage_cgroups_mode") or ""
        if mode and mode not in CGROUP_MODES:
            raise PyoukiError(f"--manage-cgroups-mode: invalid value {mode!r} (soft, full, strict or ignore)")
        self.cgroups_mode = mode
        empty = options.get("empty_ns") or ""
        if empty and empty not in _EMPTY_NS:
            raise PyoukiError(f"--empty-ns: {empty!r} is not supported (only network)")
        self.empty_ns = _EMPTY_NS.get(empty, "")
        self.lsm_profile: str | None = options.get("lsm_profile") or None
        self.lsm_mount_context: str | None = options.get("lsm_mount_context") or None

    def common(self) -> list[str]:
        """The criu arguments dump and restore share."""
        args = list(self.switches)
        args.append(f"--manage-cgroups={self.cgroups_mode or 'soft'}")
        if self.empty_ns:
            args += ["--empty-ns", self.empty_ns]
        if self.auto_dedup:
            args.append("--auto-dedup")
        if self.lazy_pages:
            args.append("--lazy-pages")
        return args


def criu_path() -> str:
    """The criu executable, or a clear error."""
    path = shutil.which("criu") or next((p for p in ("/usr/sbin/criu", "/sbin/criu") if os.access(p, os.X_OK)), None)
    if not path:
        raise PyoukiError("criu is not installed (apt-get install criu): checkpoint/restore needs it")
    return path


def _require_root(verb: str) -> None:
    from pyouki.state import in_user_namespace

    if os.geteuid() != 0 or in_user_namespace():
        raise PyoukiError(f"{verb} needs root: criu cannot checkpoint or restore a container without it")


def _mkdir(path: str, what: str) -> None:
    try:
        os.makedirs(path, 0o700, exist_ok=True)
    except OSError as e:
        raise PyoukiError(f"{what}: cannot create {path}: {reason(e)}") from None


def criu_error(log_path: str) -> str:
    """criu's first error line of log_path (without its time and source location), or an empty
    string; when criu failed probing the kernel (kerndat), says so with the kernel's release."""
    try:
        with open(log_path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    errors = [line.split("Error (", 1)[1] for line in lines if "Error (" in line]
    errors = [e.split("): ", 1)[1].strip() for e in errors if "): " in e]
    if not errors:
        return ""
    if any("kerndat" in e for e in errors):
        return f"it cannot work on this kernel ({os.uname().release}): {errors[0]}"
    return errors[0]


def _run_criu(argv: list[str], log_path: str, verb: str, pass_fds: tuple[int, ...] = ()) -> None:
    """Run criu to the end; a failure is one line with criu's own reason and the log's path."""
    log.debug("running " + " ".join(argv))
    try:
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             pass_fds=pass_fds, close_fds=True)
    except OSError as e:
        raise PyoukiError(f"{verb}: cannot run {argv[0]}: {reason(e)}") from None
    if res.returncode != 0:
        raise PyoukiError(_failure(verb, log_path, res.stderr))


def _failure(verb: str, log_path: str, stderr: bytes | str) -> str:
    why = criu_error(log_path)
    if not why:
        text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
        tail = [line for line in text.strip().splitlines() if line.strip()]
        why = tail[-1].strip() if tail else "no reason given"
    return f"{verb} failed: criu: {why} (log: {log_path})"


# -- external mounts, namespaces --------------------------------------------------------------


def _is_bind(mount: dict) -> bool:
    options = mount.get("options") or []
    return mount.get("type") == "bind" or "bind" in options or "rbind" in options


def _bind_mounts(config: dict) -> list[tuple[str, str]]:
    """(destination, source) of the config's bind mounts, in order; the destination cleaned, with
    one leading slash as mountinfo shows paths (_keys then follows the rootfs' symlinks)."""
    out = []
    for m in config.get("mounts") or []:
        if _is_bind(m):
            # not normpath("/" + dest): POSIX keeps two leading slashes, "//etc/hostname" names no
            # mount for criu, which then finds no root for the bind (podman's /etc/hostname & co.)
            out.append((os.path.normpath("/" + m["destination"].lstrip("/")), m.get("source") or ""))
    return out


class Mountpoint:
    """A mount's mountpoint that restore makes in the rootfs before criu runs (runc's
    makeCriuRestoreMountpoints): a container restored into a fresh rootfs (`podman container
    restore --import`) lacks those that the runtime made at create (podman's /run/.containerenv,
    /etc/hostname), and criu stops at the first: `Can't stat mountpoint`."""

    def __init__(self, field: str, destination: str, kind: str, source: str = "") -> None:
        self.field = field
        self.destination = destination
        self.kind = kind  # "dir" or "file", what walk() creates
        self.source = source  # a bind's source: bound there while criu runs, for mounts inside it

    def __repr__(self) -> str:
        return f"Mountpoint({self.field!r}, {self.destination!r}, {self.kind!r}, {self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mountpoint) and vars(self) == vars(other)


def restore_mountpoints(config: dict, bundle: str) -> list[Mountpoint]:
    """The mountpoints restore makes, in config order; a bind's source is made absolute (relative
    to the bundle) and must exist. Nothing beneath a tmpfs: criu restores a tmpfs' whole content
    from the image. cgroup mounts need none (criu mounts the hierarchies itself)."""
    from pyouki.mounts import clean_path

    mounts = config.get("mounts") or []
    tmpfs = [clean_path(m["destination"]) for m in mounts if m.get("type") == "tmpfs"]
    out = []
    for i, m in enumerate(mounts):
        dest = clean_path(m["destination"])
        if m.get("type") == "cgroup" or any(dest.startswith(t.rstrip("/") + "/") for t in tmpfs):
            continue
        field = f"mounts[{i}]"
        if _is_bind(m):
            source = os.path.join(bundle, m.get("source") or "")
            if not os.path.exists(source):
                raise PyoukiError(f"{field}.source: bind source {source} does not exist")
            out.append(Mountpoint(field, dest, "dir" if os.path.isdir(source) else "file", source))
        else:
            out.append(Mountpoint(field, dest, "dir"))
    return out


def make_mountpoints(rootfs: str, points: list[Mountpoint]) -> None:
    """Make each mountpoint inside rootfs (symlinks resolved inside it, as at create) and bind each
    bind's source there, so that the mountpoints of mounts inside a bind are found (runc #2748).
    Runs in restore's own mount namespace: the binds end with it."""
    from pyouki import syscalls
    from pyouki.mounts import proc_fd, walk

    rootfd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for p in points:
            try:
                fd = walk(rootfd, p.destination, p.kind)
            except OSError as e:
                raise PyoukiError(f"{p.field}.destination: failed to create {p.destination} in the rootfs: "
                                  f"{reason(e)}") from None
            try:
                if p.source:
                    syscalls.mount(p.source, proc_fd(fd), None, syscalls.MS_BIND | syscalls.MS_REC)
            except OSError as e:
                raise PyoukiError(f"{p.field}: failed to mount bind on {p.destination}: {reason(e)}") from None
            finally:
                os.close(fd)
    finally:
        os.close(rootfd)


def _keys(rootfs: str, paths: list[str]) -> list[str]:
    """criu's key for each mount destination: the path with the rootfs' symlinks followed inside
    it (mounts.resolve, runc's SecureJoin), where the mount sits in the container's mountinfo. A
    runc image restores with pyouki and the other way round, as both use the same keys."""
    from pyouki.mounts import resolve

    try:
        rootfd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return paths
    try:
        out = []
        for path in paths:
            try:
                out.append(resolve(rootfd, path))
            except OSError:  # a file where a directory should be: criu names the mount itself
                out.append(path)
        return out
    finally:
        os.close(rootfd)


def _mounted_devices(pid: int, config: dict) -> list[str]:
    """linux.devices that are mount points in the container (bound from the host in a user namespace)."""
    points = _mount_points(pid)
    return [d["path"] for d in (config.get("linux") or {}).get("devices") or [] if d.get("path") in points]


def _mount_points(pid: int) -> set[str]:
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            return {line.split()[4].replace("\\040", " ") for line in f}
    except OSError:
        return set()


def _masked_files(pid: int, config: dict) -> list[str]:
    """linux.maskedPaths that are files in the container (/dev/null is bound over those)."""
    out = []
    for path in (config.get("linux") or {}).get("maskedPaths") or []:
        try:
            st = os.stat(f"/proc/{pid}/root/{path.lstrip('/')}")
        except OSError:
            continue
        import stat

        if not stat.S_ISDIR(st.st_mode):
            out.append(path)
    return out


def _external_ns_key(kind: str) -> str:
    return "extRoot" + kind.capitalize() + "NS"  # runc's keys: a runc image restores with pyouki


def _joined_namespaces(config: dict) -> dict[str, str]:
    from pyouki.config import namespaces

    return {kind: path for kind, path in namespaces(config).items() if path}


# criu's names for the namespaces that --join-ns takes
_CRIU_NS = {"ipc": "ipc", "uts": "uts", "mount": "mnt", "user": "user", "cgroup": "cgroup", "time": "time"}


def _freezer(record: dict) -> str | None:
    """The cgroup criu freezes the container with (v1 freezer, v2 the container's cgroup)."""
    cg = record.get("cgroup") or {}
    if cg.get("lenient"):
        cg = {k: v for k, v in cg.items() if k != "lenient"}
    if cg.get("driver") == "cgroupfs-v1":
        return (cg.get("paths") or {}).get("freezer")
    path = (cg.get("fs") or cg).get("path")
    return path if isinstance(path, str) else None


def _stdio_links(pid: int) -> list[str]:
    out = []
    for fd in range(3):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            out.append("/dev/null")
    return out


# -- checkpoint -------------------------------------------------------------------------------


def checkpoint(root: str, container_id: str, options: dict) -> None:
    """Checkpoint a running container into --image-path (runc's `checkpoint`)."""
    from pyouki.lifecycle import load

    opts = CriuOptions(options)
    container = load(root, container_id)
    _require_root("checkpoint")
    criu = criu_path()
    container.lock()
    try:
        status = container.status()
        if status not in ("running", "paused"):
            raise ContainerError(f"cannot checkpoint container {container_id}: {NOT_RUNNING} ({status})")
        config = container.config()
        if (config.get("process") or {}).get("terminal"):
            raise PyoukiError("process.terminal: cannot checkpoint a container with a terminal (criu would need "
                              "its pty master)")
        _dump(criu, container, config, opts)
    finally:
        container.unlock()
    if not (opts.leave_running or opts.pre_dump):
        from pyouki.lifecycle import delete

        # like runc: the processes are gone, so is the container (restore brings it back)
        delete(root, container_id, force=True)


def _dump(criu: str, container, config: dict, opts: CriuOptions) -> None:  # type: ignore[no-untyped-def]
    _mkdir(opts.image_path, "--image-path")
    args = [criu, "pre-dump" if opts.pre_dump else "dump", "-t", str(container.pid), "-D", opts.image_path,
            "-v4", "-o", DUMP_LOG, "--root", container.record.get("rootfs") or "/"]
    log_dir = opts.image_path
    if opts.work_path:
        _mkdir(opts.work_path, "--work-path")
        args += ["-W", opts.work_path]
        log_dir = opts.work_path
    args += opts.common()
    freezer = _freezer(container.record)
    if freezer:
        args += ["--freeze-cgroup", freezer]
    if opts.leave_running:
        args.append("--leave-running")
    if opts.parent_path:
        args += ["--prev-images-dir", opts.parent_path, "--track-mem"]
    if opts.pre_dump:
        args.append("--track-mem")
    pass_fds: tuple[int, ...] = ()
    if opts.page_server:
        address, _, port = opts.page_server.rpartition(":")
        if not address or not port.isdigit():
            raise PyoukiError(f"--page-server: {opts.page_server!r} is not ADDRESS:PORT")
        args += ["--page-server", "--address", address, "--port", port]
    if opts.lazy_pages and opts.status_fd not in (None, "", "-1"):
        fd = int(str(opts.status_fd))
        args += ["--status-fd", str(fd)]
        pass_fds = (fd,)
    for kind in ("network", "pid"):
        path = _joined_namespaces(config).get(kind)
        if path:
            try:
                ino = os.stat(path).st_ino
            except OSError as e:
                raise PyoukiError(f"linux.namespaces: {kind} namespace {path}: {reason(e)}") from None
            args += ["--external", f"{'net' if kind == 'network' else kind}[{ino}]:{_external_ns_key(kind)}"]
    if not opts.pre_dump:
        pid = container.pid
        binds = _bind_mounts(config)
        for key in _keys(container.record.get("rootfs") or "/", [dest for dest, _ in binds]):
            args += ["--external", f"mnt[{key}]:{key}"]
        for path in _masked_files(pid, config):
            args += ["--external", f"mnt[{path}]:/dev/null"]
        for path in _mounted_devices(pid, config):
            args += ["--external", f"mnt[{path}]:{path}"]
        with open(os.path.join(opts.image_path, DESCRIPTORS), "w") as f:
            json.dump(_stdio_links(pid), f)
    _run_criu(args, os.path.join(log_dir, DUMP_LOG), "checkpoint", pass_fds)


# -- restore ----------------------------------------------------------------------------------


def restore(create_opts, options: dict, detach: bool, subreaper: bool = True) -> int:  # type: ignore[no-untyped-def]
    """Restore a container from --image-path under create_opts.id (runc's `restore`); in the
    foreground, wait for it and return its exit status, as `run` does."""
    from pyouki.config import load_bundle, namespaces, validate
    from pyouki.create import _owner_name, write_pid_file
    from pyouki.spawn import kill_and_reap
    from pyouki.state import Container, process_start_time, rfc3339_now

    opts = CriuOptions(options)
    _require_root("restore")
    criu = criu_path()
    if not os.path.isfile(os.path.join(opts.image_path, "inventory.img")):
        raise PyoukiError(f"--image-path: {opts.image_path} holds no checkpoint (no inventory.img)")
    container = Container(create_opts.root, create_opts.id)
    bundle, config = load_bundle(create_opts.bundle)
    rootfs = validate(config, bundle, create_opts.rootless)
    if (config.get("process") or {}).get("terminal"):
        raise PyoukiError("process.terminal: cannot restore a container with a terminal (criu would need its pty "
                          "master)")
    if create_opts.console_socket:
        raise PyoukiError("--console-socket: given, but process.terminal is false")
    try:
        os.mkdir(container.dir, 0o700)
    except FileExistsError:
        raise ContainerError(f"{create_opts.id}: {EXISTS}") from None
    cgroup = None
    init_pid = 0
    try:
        container.lock()
        if create_opts.cgroups:
            from pyouki.cgroups import make_manager

            cgroup = make_manager((config.get("linux") or {}).get("cgroupsPath"), create_opts.id,
                                  rootless=create_opts.rootless, systemd=create_opts.systemd_cgroup)
        if subreaper and not detach:
            from pyouki import syscalls

            syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
        init_pid = _restore(criu, container, config, bundle, rootfs, opts, cgroup)
        nss = namespaces(config)
        from pyouki import hooks

        container.record = {
            "id": create_opts.id, "pid": init_pid, "pid_start": process_start_time(init_pid), "bundle": bundle,
            "rootfs": rootfs, "created": rfc3339_now(), "owner": _owner_name(),
            "annotations": config.get("annotations") or {}, "rootless": create_opts.rootless, "notify": False,
            "cgroup": cgroup.to_state() if cgroup is not None else None,
            "hooks": hooks.has(config, "poststart", "poststop"),
            "pid_ns": "pid" in nss and nss["pid"] is None,
        }
        container.save_config(config)
        container.save()
        if create_opts.pid_file:
            write_pid_file(create_opts.pid_file, init_pid)
    except BaseException:
        if init_pid:
            kill_and_reap(init_pid)
        if cgroup is not None:
            cgroup.remove()
        container.remove_dir()
        raise
    finally:
        container.unlock()
    log.debug(f"container {create_opts.id} restored with init pid {init_pid}")
    if detach:
        return 0
    from pyouki.cli.foreground import forward_signals, reap  # restore in the foreground is a command's wait, as run
    from pyouki.lifecycle import delete

    forward_signals(init_pid)
    status = reap(init_pid)
    delete(create_opts.root, create_opts.id, force=True)
    return status


def _restore(criu: str, container, config: dict, bundle: str, rootfs: str,  # type: ignore[no-untyped-def]
             opts: CriuOptions,
             cgroup) -> int:  # type: ignore[no-untyped-def]
    """Run criu restore in a child put in the container's cgroup first; return the restored init's pid."""
    from pyouki import syscalls

    log_dir = opts.work_path or opts.image_path
    mnt = os.path.join(container.dir, "criu-root")
    pidfile = os.path.join(container.dir, "criu.pid")
    os.mkdir(mnt, 0o755)
    args = [criu, "restore", "-D", opts.image_path, "-v4", "-o", RESTORE_LOG, "--root", mnt,
            "--restore-detached", "--restore-sibling", "--pidfile", pidfile, "--evasive-devices"]
    if opts.work_path:
        _mkdir(opts.work_path, "--work-path")
        args += ["-W", opts.work_path]
    args += opts.common()
    if opts.lsm_profile:
        args += ["--lsm-profile", opts.lsm_profile]
    if opts.lsm_mount_context:
        args += ["--lsm-mount-context", opts.lsm_mount_context]
    from pyouki import hooks

    keep: list[int] = []  # closed once criu is done
    if hooks.has(config, "prestart", "createRuntime"):
        container.save_config(config)  # what the action script reads
        script, script_fd = _action_script(container.dir)
        keep.append(script_fd)
        args += ["--action-script", script]
    binds = _bind_mounts(config)
    for key, (_, source) in zip(_keys(rootfs, [dest for dest, _ in binds]), binds, strict=True):
        args += ["--external", f"mnt[{key}]:{os.path.join(bundle, source)}"]  # relative: to the bundle
    if (config.get("linux") or {}).get("maskedPaths"):
        args += ["--external", "mnt[/dev/null]:/dev/null"]
    for d in (config.get("linux") or {}).get("devices") or []:
        if d.get("path"):
            args += ["--external", f"mnt[{d['path']}]:{d['path']}"]
    try:
        for kind, path in _joined_namespaces(config).items():
            if kind in ("network", "pid"):
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as e:
                    raise PyoukiError(f"linux.namespaces: {kind} namespace {path}: "
                                      f"{reason(e)}") from None
                keep.append(fd)
                args += ["--inherit-fd", f"fd[{fd}]:{_external_ns_key(kind)}"]
            elif kind in _CRIU_NS:
                args += ["--join-ns", f"{_CRIU_NS[kind]}:{path}"]
        try:
            with open(os.path.join(opts.image_path, DESCRIPTORS)) as f:
                links = json.load(f)
        except (OSError, ValueError) as e:
            raise PyoukiError(f"--image-path: cannot read {DESCRIPTORS}: {e}") from None
        for fd, link in enumerate(links[:3]):
            if isinstance(link, str) and link.startswith("pipe:"):
                args += ["--inherit-fd", f"fd[{fd}]:{link}"]  # our stdio takes the old pipes' place
        points = restore_mountpoints(config, bundle)
        gate_r, gate_w = os.pipe()
        error_r, error_w = os.pipe()  # the child's error, if it cannot exec criu (both are close-on-exec)
        pid = os.fork()
        if pid == 0:  # the child becomes criu, once it is in the container's cgroup
            try:
                os.close(gate_w)
                os.close(error_r)
                given = _read_all(gate_r)  # the --cgroup-root arguments; nothing: the parent failed
                if not given:
                    os._exit(1)
                # a mount namespace of criu's own for --root: criu wants a mount point whose
                # parent is not overmounted, and nothing of it may outlive the restore. Slave, not
                # private: criu gives the restored root the propagation of --root, which must
                # be that of the dumped root (a slave of the host's mount, like the rootfs).
                syscalls.unshare(syscalls.CLONE_NEWNS)
                syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_SLAVE)
                make_mountpoints(rootfs, points)
                syscalls.mount(rootfs, mnt, None, syscalls.MS_BIND | syscalls.MS_REC)
                for fd in keep:
                    os.set_inheritable(fd, True)
                os.environ["PYOUKI_BUNDLE"] = bundle  # criu passes its environment to the action script
                os.execv(criu, args + [a for a in given.decode().split("\0") if a])
            except PyoukiError as e:
                os.write(error_w, str(e).encode())
            except BaseException as e:  # noqa: BLE001  (the child must never return)
                os.write(error_w, f"restore failed: cannot run criu: {reason(e) if isinstance(e, OSError) else e}"
                         .encode())
            os._exit(127)
        os.close(gate_r)
        os.close(error_w)
        try:
            extra: list[str] = ["--manage-cgroups=ignore"] if cgroup is None else []
            if cgroup is not None:
                cgroup.apply(pid)
                resources = dict((config.get("linux") or {}).get("resources") or {})
                from pyouki.cgroups.devices import device_rules

                resources["devices"] = device_rules(config.get("linux") or {})
                cgroup.set_resources(resources)
                extra = _cgroup_roots(pid)
            os.write(gate_w, ("\0".join(extra) + "\0").encode())
        except BaseException:
            from pyouki.spawn import kill_and_reap

            os.close(gate_w)
            os.close(error_r)
            kill_and_reap(pid)
            raise
        os.close(gate_w)
        _, status = os.waitpid(pid, 0)
        child_error = _read_all(error_r).decode(errors="replace")
        os.close(error_r)
        if child_error:
            raise PyoukiError(child_error)
    finally:
        for fd in keep:
            os.close(fd)
        try:
            os.rmdir(mnt)
        except OSError:
            pass
    if status != 0:
        hook_error = os.path.join(container.dir, HOOK_ERROR)
        if os.path.exists(hook_error):
            with open(hook_error) as f:
                raise PyoukiError(f.read().strip())
        raise PyoukiError(_failure("restore", os.path.join(log_dir, RESTORE_LOG), ""))
    try:
        with open(pidfile) as f:
            return int(f.read().strip())
    except (OSError, ValueError) as e:
        raise PyoukiError(f"restore: criu left no pid of the restored init ({e})") from None


def _action_script(container_dir: str) -> tuple[str, int]:
    """criu's --action-script, which criu executes without a shell, and the fd that holds it: a
    small script in a memfd (the state directory may be noexec, /run is on Debian), run through
    this process's /proc/PID/fd while criu runs; it runs this Python, with pyouki's path,
    calling action_script."""
    import shlex
    import sys

    code = (f"import sys; sys.path[0:0] = {[p for p in sys.path if p]!r}; "
            "from pyouki.criu import action_script; sys.exit(action_script(sys.argv[1]))")
    text = "#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in (sys.executable, "-I", "-S", "-c", code,
                                                                   container_dir)) + "\n"
    fd = os.memfd_create("pyouki-criu-action", os.MFD_CLOEXEC)
    os.write(fd, text.encode())
    return f"/proc/{os.getpid()}/fd/{fd}", fd


def action_script(container_dir: str) -> int:
    """criu's notification during a restore: at setup-namespaces (the restored init exists, in its
    namespaces, not yet running) run the prestart and createRuntime hooks, as runc does. A
    failure fails the restore; its one line goes to a file restore reads."""
    if os.environ.get("CRTOOLS_SCRIPT_ACTION") != "setup-namespaces":
        return 0
    from pyouki import OCI_VERSION, hooks
    from pyouki.state import Container

    try:
        container = Container(os.path.dirname(container_dir), os.path.basename(container_dir))
        config = container.config()
        state = {"ociVersion": OCI_VERSION, "id": container.id, "status": "creating",
                 "pid": int(os.environ.get("CRTOOLS_INIT_PID") or 0),
                 "bundle": os.environ.get("PYOUKI_BUNDLE", ""),
                 "annotations": config.get("annotations") or {}}
        hooks.run(config, "prestart", state)
        hooks.run(config, "createRuntime", state)
    except PyoukiError as e:
        with open(os.path.join(container_dir, HOOK_ERROR), "w") as f:
            f.write(str(e) + "\n")
        return 1
    return 0


def _read_all(fd: int) -> bytes:
    data = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return data
        data += chunk


def _cgroup_roots(pid: int) -> list[str]:
    """--cgroup-root for each hierarchy pid is in: the restored tasks go to the container's cgroup."""
    out = []
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            out += ["--cgroup-root", f"{controllers}:{path}" if controllers else path]
    return out
