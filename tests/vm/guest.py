"""Inside the VM: real pyouki containers with enforced cgroup v2 limits (no pytest here).

    python3 tests/vm/guest.py RESULTS.json      # as root (the VM's test unit): every part
    python3 tests/vm/guest.py --part NAME       # one part, JSON on stdout

Parts: ``rootless-systemd`` (as the lingering user ``tester`` through a PAM login, the user
manager, ``--systemd-cgroup``), ``rootful-systemd`` (the system manager) and
``rootful-cgroupfs`` (no systemd). Each one creates containers with memory, pids and cpu
limits and reports what the kernel did: the limit files in the container's cgroup before and
after ``update``, a memory hog's exit status and ``memory.events``, a fork loop's
``pids.current`` and ``pids.events``, and whether delete removed the cgroup. The part
``rootful-apparmor`` loads a small AppArmor profile with apparmor_parser and reports the
labels of containers and exec'd processes under it and under ``unconfined``, and what the
profile denied. The pytest side (tests/test_vm_enforcement.py) asserts on the JSON.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
TEST_UID = 1000
HERE = Path(__file__).resolve().parent
LIMITS = {
    "memory": {"limit": 32 * MiB, "swap": 32 * MiB},
    "pids": {"limit": 20},
    "cpu": {"shares": 512, "quota": 20_000, "period": 100_000},
}
UPDATED = {"memory": {"limit": 48 * MiB, "swap": 48 * MiB}, "pids": {"limit": 30}, "cpu": {"quota": 50_000}}
FILES = ("memory.max", "memory.swap.max", "pids.max", "cpu.max", "cpu.weight", "cgroup.controllers")
PARTS = ("rootless-systemd", "rootful-systemd", "rootful-cgroupfs", "rootful-apparmor", "rootful-criu")
APPARMOR_PROFILE = "pyouki-vmtest"
# Everything allowed but reading /secret (root could read it without the profile). No includes:
# it loads in well under a second under TCG.
APPARMOR_POLICY = """\
profile pyouki-vmtest flags=(attach_disconnected,mediate_deleted) {
  file,
  capability,
  network,
  signal,
  ptrace,
  unix,
  deny /secret r,
}
"""


def _driver() -> Any:
    """tests/systemd/check_driver.py (staged next to this file): pyouki(), make_bundle(), update()."""
    spec = importlib.util.spec_from_file_location("check_driver", HERE / "check_driver.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _kv(text: str | None) -> dict[str, int]:
    out = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if value.isdigit():
            out[key] = int(value)
    return out


def _check(drv: Any) -> dict[str, Any]:
    """`pyouki check` of the logged-in user, on a machine where rootless limits work (issue 11)."""
    res = drv.pyouki("check", "--format", "json")
    facts: dict[str, Any] = {"rc": res.returncode, "stderr": res.stderr.strip()}
    try:
        doc = json.loads(res.stdout)
    except ValueError:
        facts["stdout"] = res.stdout[-2000:]
        return facts
    facts["ready"] = doc["ready"]
    facts["uid"] = doc["uid"]
    facts["statuses"] = {c["name"]: c["status"] for c in doc["checks"]}
    facts["failed"] = [c for c in doc["checks"] if c["status"] == "fail"]
    return facts


class Part:
    """One way of running pyouki (rootless or rootful, systemd or cgroupfs) and its containers."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.systemd = name.endswith("-systemd")
        self.rootless = name.startswith("rootless")
        self.drv = _driver()
        self.base = tempfile.mkdtemp(prefix=f"pyouki-vm-{name}-")
        self.root = os.path.join(self.base, "state")
        self.n = 0

    def pyouki(self, *args: str) -> Any:
        flags = ["--root", self.root] + (["--systemd-cgroup"] if self.systemd and args[0] in ("create", "run") else [])
        return self.drv.pyouki(*flags, *args, timeout=120)

    def create(self, args: list[str], resources: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        """Create and start a container running args; return (id, its cgroup dir, facts)."""
        self.n += 1
        cid = f"{self.name}-{self.n}-{os.getpid()}"
        workdir = os.path.join(self.base, cid)
        os.mkdir(workdir)
        bundle = self.drv.make_bundle(workdir, self.rootless, None, args)
        config_path = os.path.join(bundle, "config.json")
        with open(config_path) as f:
            config = json.load(f)
        config["linux"]["resources"] = resources
        config["root"]["readonly"] = False  # the scripts report through files in the rootfs
        with open(config_path, "w") as f:
            json.dump(config, f)
        res = self.pyouki("create", "--bundle", bundle, cid)
        facts: dict[str, Any] = {"create": {"rc": res.returncode, "stderr": res.stderr.strip()}}
        if res.returncode:
            return cid, "", facts
        from pyouki.state import Container

        container = Container(self.root, cid)
        container.load()
        record = container.record["cgroup"]
        facts["driver"] = record["driver"]
        facts["unit"] = record.get("unit")
        cgroup = (record.get("fs") or record)["path"]
        facts["cgroup"] = cgroup
        facts["pid"] = container.record["pid"]
        facts["start_rc"] = self.pyouki("start", cid).returncode
        return cid, cgroup, facts

    def delete(self, cid: str, cgroup: str, facts: dict[str, Any]) -> None:
        """kill -9, delete, and record whether the cgroup (and unit) went away."""
        self.pyouki("kill", cid, "KILL")
        pid = facts.get("pid")
        deadline = time.monotonic() + 30
        while pid and os.path.exists(f"/proc/{pid}") and _read(f"/proc/{pid}/stat") and time.monotonic() < deadline:
            stat = _read(f"/proc/{pid}/stat") or ""
            if stat.rpartition(")")[2].split()[:1] == ["Z"]:
                break
            time.sleep(0.05)
        res = self.pyouki("delete", "--force", cid)
        facts["delete"] = {"rc": res.returncode, "stderr": res.stderr.strip()}
        facts["cgroup_left"] = bool(cgroup) and os.path.exists(cgroup)
        if facts.get("unit"):
            from pyouki.dbus_native.systemd import SystemdManager

            with SystemdManager.connect(user=self.rootless, timeout=30) as sd:
                facts["unit_left"] = sd.unit_exists(facts["unit"])

    def unit(self, unit: str | None) -> dict[str, Any] | None:
        """What the manager says of the container's unit (systemd parts): Delegate and the limits
        as unit properties, which systemd keeps and applies again (e.g. on daemon-reload)."""
        if not self.systemd or not unit:
            return None
        from pyouki.dbus_native.systemd import SystemdManager

        with SystemdManager.connect(user=self.rootless, timeout=30) as sd:
            return dict(self.drv.unit_facts(sd, unit))

    def limits(self) -> dict[str, Any]:
        """The limit files (and unit properties) before and after `update`."""
        cid, cgroup, facts = self.create(["sleep", "1000"], json.loads(json.dumps(LIMITS)))
        if cgroup:
            try:
                facts["files"] = {name: _read(os.path.join(cgroup, name)) for name in FILES}
                facts["procs"] = _read(os.path.join(cgroup, "cgroup.procs"))
                facts["unit_created"] = self.unit(facts.get("unit"))
                facts["update_via"] = self.drv.update(self.root, cid, UPDATED, dict(os.environ))
                facts["updated"] = {name: _read(os.path.join(cgroup, name)) for name in FILES}
                facts["unit_updated"] = self.unit(facts.get("unit"))
            finally:
                self.delete(cid, cgroup, facts)
        return facts

    def memory_hog(self) -> dict[str, Any]:
        """dd with a 64 MiB buffer under a 32 MiB limit (no swap): the OOM killer ends it."""
        script = "dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; echo $? > /hog.status; exec sleep 1000"
        resources = {"memory": {"limit": 32 * MiB, "swap": 32 * MiB}, "pids": {"limit": 20}}
        cid, cgroup, facts = self.create(["sh", "-c", script], resources)
        if cgroup:
            try:
                status = os.path.join(self.base, cid, "bundle/rootfs/hog.status")
                facts["hog_status"] = _wait_file(status, 60)
                facts["memory.events"] = _kv(_read(os.path.join(cgroup, "memory.events")))
                facts["memory.max"] = _read(os.path.join(cgroup, "memory.max"))
            finally:
                self.delete(cid, cgroup, facts)
        return facts

    def fork_bomb(self) -> dict[str, Any]:
        """A subshell forking 60 sleeps under pids.max 20: a fork fails at the limit.

        A failed fork ends the (non-interactive) subshell; the container's init survives to
        report, with builtins only, since it cannot fork either.
        """
        script = ("(i=0; while [ $i -lt 60 ]; do sleep 1000 & i=$((i+1)); done) 2>/bomb.err; "
                  "echo done > /bomb.done; exec sleep 1000")
        cid, cgroup, facts = self.create(["sh", "-c", script], {"pids": {"limit": 20}})
        if cgroup:
            try:
                rootfs = os.path.join(self.base, cid, "bundle/rootfs")
                facts["done"] = _wait_file(os.path.join(rootfs, "bomb.done"), 60)
                facts["fork_errors"] = len((_read(os.path.join(rootfs, "bomb.err")) or "").splitlines())
                facts["pids.current"] = _read(os.path.join(cgroup, "pids.current"))
                facts["pids.max"] = _read(os.path.join(cgroup, "pids.max"))
                facts["pids.events"] = _kv(_read(os.path.join(cgroup, "pids.events")))
            finally:
                self.delete(cid, cgroup, facts)
        return facts

    def run(self) -> dict[str, Any]:
        out: dict[str, Any] = {"uid": os.getuid()}
        if self.rootless:
            out["check"] = _check(self.drv)
        for name, fn in (("limits", self.limits), ("memory_hog", self.memory_hog), ("fork_bomb", self.fork_bomb)):
            _progress(f"{self.name}: {name}")
            started = time.monotonic()
            try:
                out[name] = fn()
            except Exception:
                out[name] = {"error": traceback.format_exc()}
            out[name]["seconds"] = round(time.monotonic() - started, 2)
        shutil.rmtree(self.base, ignore_errors=True)
        return out


class AppArmorPart(Part):
    """Rootful containers with process.apparmorProfile: the loaded profile, ``unconfined``, errors."""

    def bundle(self, profile: str | None, script: str, fake_proc: bool = False) -> tuple[str, str]:
        """A bundle running script (sh -c) with the profile; return (id, bundle path)."""
        self.n += 1
        cid = f"{self.name}-{self.n}-{os.getpid()}"
        workdir = os.path.join(self.base, cid)
        os.mkdir(workdir)
        bundle = self.drv.make_bundle(workdir, False, None, ["sh", "-c", script])
        rootfs = os.path.join(bundle, "rootfs")
        with open(os.path.join(rootfs, "secret"), "w") as f:
            f.write("secret\n")
        config_path = os.path.join(bundle, "config.json")
        with open(config_path) as f:
            config = json.load(f)
        config["linux"].pop("resources", None)
        config["root"]["readonly"] = False  # init reports through files in the rootfs
        if profile is not None:
            config["process"]["apparmorProfile"] = profile
        if fake_proc:
            # no procfs in the container, and an image that plants the attribute file as a plain
            # file: the request must fail, not land in that file (and leave the process unconfined)
            config["mounts"] = [m for m in config["mounts"] if m["destination"] != "/proc"]
            config["linux"]["maskedPaths"] = config["linux"]["readonlyPaths"] = []
            attr = os.path.join(rootfs, "proc/thread-self/attr/apparmor")
            os.makedirs(attr)
            open(os.path.join(attr, "exec"), "w").close()
        with open(config_path, "w") as f:
            json.dump(config, f)
        return cid, bundle

    def container(self, profile: str | None, fake_proc: bool = False) -> tuple[str, dict[str, Any]]:
        """Create and start a container whose init tries to read /secret, then sleeps."""
        script = "cat /secret >/dev/null 2>/init.err; echo $? >/init.rc; exec sleep 1000"
        cid, bundle = self.bundle(profile, script, fake_proc)
        res = self.pyouki("create", "--bundle", bundle, cid)
        facts: dict[str, Any] = {"create": {"rc": res.returncode, "stderr": res.stderr.strip()}}
        if res.returncode == 0:
            from pyouki.state import Container

            pid = Container(self.root, cid).load().pid
            facts["pid"] = pid
            facts["attr_created"] = _read(f"/proc/{pid}/attr/current")  # the runtime's, until execve
            facts["start_rc"] = self.pyouki("start", cid).returncode
            rootfs = os.path.join(bundle, "rootfs")
            facts["init_secret_rc"] = _wait_file(os.path.join(rootfs, "init.rc"), 60)
            facts["init_secret_err"] = _read(os.path.join(rootfs, "init.err"))
            facts["attr_current"] = _read(f"/proc/{pid}/attr/current")
        if fake_proc:
            facts["planted_file"] = _read(os.path.join(bundle, "rootfs/proc/thread-self/attr/apparmor/exec"))
        return cid, facts

    def exec(self, *args: str) -> dict[str, Any]:
        res = self.pyouki("exec", *args)
        return {"rc": res.returncode, "stdout": res.stdout.strip(), "stderr": res.stderr.strip()}

    def remove(self, cid: str, facts: dict[str, Any]) -> None:
        facts["delete_rc"] = self.pyouki("delete", "--force", cid).returncode

    def confined(self) -> dict[str, Any]:
        """The loaded profile: init and exec'd processes under it, /secret denied to both."""
        cid, facts = self.container(APPARMOR_PROFILE)
        if facts["create"]["rc"] == 0:
            probe = "cat /proc/self/attr/current; cat /secret"
            facts["exec"] = self.exec("--user", "1000:1000", cid, "sh", "-c", probe)  # requested without root
            facts["exec_unconfined"] = self.exec("--apparmor", "unconfined", cid, "sh", "-c", probe)
            self.remove(cid, facts)
        return facts

    def unconfined(self) -> dict[str, Any]:
        """The literal profile ``unconfined``, and exec --apparmor PROFILE into that container."""
        cid, facts = self.container("unconfined")
        if facts["create"]["rc"] == 0:
            facts["exec_profile"] = self.exec("--apparmor", APPARMOR_PROFILE, cid, "sh", "-c",
                                              "cat /proc/self/attr/current; cat /secret")
            self.remove(cid, facts)
        return facts

    def errors(self) -> dict[str, Any]:
        """A profile that is not loaded, and a planted attribute file: create fails, nothing left."""
        out: dict[str, Any] = {}
        for case, profile, fake in (("not_loaded", "pyouki-no-such-profile", False),
                                    ("planted_attr", APPARMOR_PROFILE, True)):
            cid, facts = self.container(profile, fake_proc=fake)
            if facts["create"]["rc"] == 0:
                self.remove(cid, facts)
            facts["state_left"] = sorted(os.listdir(self.root)) if os.path.isdir(self.root) else []
            out[case] = facts
        return out

    def run(self) -> dict[str, Any]:
        out: dict[str, Any] = {"uid": os.getuid(), "enabled": _read("/sys/module/apparmor/parameters/enabled")}
        policy = os.path.join(self.base, "policy")
        with open(policy, "w") as f:
            f.write(APPARMOR_POLICY)
        res = subprocess.run(["apparmor_parser", "--replace", policy], capture_output=True, text=True,
                             timeout=120, stdin=subprocess.DEVNULL)
        out["load"] = {"rc": res.returncode, "stderr": res.stderr.strip()}
        out["loaded"] = _read("/sys/kernel/security/apparmor/profiles")
        for name, fn in (("confined", self.confined), ("unconfined", self.unconfined), ("errors", self.errors)):
            _progress(f"{self.name}: {name}")
            started = time.monotonic()
            try:
                out[name] = fn()
            except Exception:
                out[name] = {"error": traceback.format_exc()}
            out[name]["seconds"] = round(time.monotonic() - started, 2)
        shutil.rmtree(self.base, ignore_errors=True)
        return out


class CriuPart(Part):
    """Rootful cgroupfs containers checkpointed and restored with criu (it needs root).

    The container's init is a shell counting in memory and writing ``<its pid> <count>`` to
    /counter every 0.2 s: after a restore the count goes on from where it was (a restarted
    shell would begin at 1) and the pid is the same inside the pid namespace. Its stdio are
    pipes (criu hands the old ones' places to restore's own), never files of the host.
    """

    # /counts keeps every count, so a test sees the whole sequence across a restore
    COUNTER = 'i=0; while :; do i=$((i+1)); echo "$$ $i" > /counter; echo $i >> /counts; sleep 0.2; done'

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.pipes: list[int] = []

    def cmd(self, *args: str) -> dict[str, Any]:
        """pyouki with pipes as stdio (a container inherits them); its stderr read back."""
        stdin_r, stdin_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        os.set_blocking(err_r, False)
        try:
            rc = subprocess.run([*self.drv.PYOUKI, "--root", self.root, *args], stdin=stdin_r, stdout=out_w,
                                stderr=err_w, timeout=300).returncode
        finally:
            for fd in (stdin_r, out_w, err_w):
                os.close(fd)
        try:
            err = os.read(err_r, 65536).decode(errors="replace").strip()
        except BlockingIOError:
            err = ""
        self.pipes += [stdin_w, out_r, err_r]  # kept open: the container's stdio stay pipes with readers
        return {"rc": rc, "stderr": err}

    def counter(self, rootfs: str) -> tuple[int, int] | None:
        """(pid inside the container, count) from /counter."""
        fields = (_read(os.path.join(rootfs, "counter")) or "").split()
        return (int(fields[0]), int(fields[1])) if len(fields) == 2 else None

    def wait_count(self, rootfs: str, above: int, timeout: float = 90) -> tuple[int, int] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.counter(rootfs)
            if value and value[1] > above:
                return value
            time.sleep(0.05)
        return self.counter(rootfs)

    def observe(self, cid: str) -> dict[str, Any]:
        """The container's state and its init's view: NSpid, cgroup."""
        res = self.drv.pyouki("--root", self.root, "state", cid, timeout=120)
        facts: dict[str, Any] = {"state_rc": res.returncode}
        if res.returncode == 0:
            state = json.loads(res.stdout)
            facts["status"] = state["status"]
            facts["pid"] = pid = state["pid"]
            status = _read(f"/proc/{pid}/status") or ""
            facts["nspid"] = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")),
                                  None)
            facts["cgroup"] = _read(f"/proc/{pid}/cgroup")
        return facts

    def start(self, cid: str, hooks: dict[str, Any] | None = None, mounts: list[dict[str, Any]] | None = None,
              prepare: Callable[[str], None] | None = None) -> tuple[str, str, dict[str, Any]]:
        workdir = os.path.join(self.base, cid)
        os.mkdir(workdir)
        bundle = self.drv.make_bundle(workdir, False, None, ["sh", "-c", self.COUNTER])
        if prepare:
            prepare(os.path.join(bundle, "rootfs"))
        config_path = os.path.join(bundle, "config.json")
        with open(config_path) as f:
            config = json.load(f)
        config["linux"].pop("resources", None)
        config["linux"]["resources"] = {"pids": {"limit": 50}}
        config["root"]["readonly"] = False  # the counter is a file in the rootfs
        if hooks:
            config["hooks"] = hooks
        if mounts:
            config["mounts"] += mounts
        with open(config_path, "w") as f:
            json.dump(config, f)
        facts: dict[str, Any] = {"create": self.cmd("create", "--bundle", bundle, cid)}
        if facts["create"]["rc"] == 0:
            facts["start"] = self.cmd("start", cid)
        return bundle, os.path.join(bundle, "rootfs"), facts

    def stopped(self) -> dict[str, Any]:
        """The default: criu ends the container, pyouki deletes it; restore brings it back."""
        cid = f"criu-stop-{os.getpid()}"
        bundle, rootfs, facts = self.start(cid)
        if facts["create"]["rc"]:
            return facts
        facts["before"] = self.wait_count(rootfs, 10)
        facts["running"] = self.observe(cid)
        image, work = os.path.join(self.base, "img-stop"), os.path.join(self.base, "work-stop")
        started = time.monotonic()
        facts["checkpoint"] = self.cmd("checkpoint", "--image-path", image, "--work-path", work, cid)
        facts["checkpoint_seconds"] = round(time.monotonic() - started, 2)
        facts["after_checkpoint"] = self.observe(cid)  # gone: pyouki deleted it
        facts["init_left"] = os.path.exists(f"/proc/{facts['running'].get('pid')}/status")
        facts["images"] = sorted(os.listdir(image)) if os.path.isdir(image) else []
        facts["dump_log_error"] = _criu_errors(os.path.join(work, "dump.log"))
        facts["at_checkpoint"] = self.counter(rootfs)
        time.sleep(1)
        facts["stopped_count"] = self.counter(rootfs)  # nothing counts while checkpointed
        facts["restore"] = self.cmd("restore", "--detach", "--image-path", image, "--work-path", work,
                                    "--bundle", bundle, cid)
        facts["restore_log_error"] = _criu_errors(os.path.join(work, "restore.log"))
        if facts["restore"]["rc"] == 0:
            at = (facts["at_checkpoint"] or (0, 0))[1]
            facts["first_after_restore"] = self.wait_count(rootfs, at)
            facts["later"] = self.wait_count(rootfs, at + 3)
            facts["restored"] = self.observe(cid)
            facts["delete"] = self.cmd("delete", "--force", cid)
            facts["counts"] = _counts(rootfs)
        facts["cgroup_left"] = os.path.exists(f"/sys/fs/cgroup/pyouki/{cid}")
        return facts

    def leave_running(self) -> dict[str, Any]:
        """--leave-running: the container goes on; a restore of its image (once it is deleted)
        takes up the count where the checkpoint was."""
        cid = f"criu-leave-{os.getpid()}"
        bundle, rootfs, facts = self.start(cid)
        if facts["create"]["rc"]:
            return facts
        facts["before"] = self.wait_count(rootfs, 10)
        facts["running"] = self.observe(cid)
        image = os.path.join(self.base, "img-leave")
        facts["checkpoint"] = self.cmd("checkpoint", "--leave-running", "--image-path", image, cid)
        facts["dump_log_error"] = _criu_errors(os.path.join(image, "dump.log"))
        at = (self.counter(rootfs) or (0, 0))[1]
        facts["at_checkpoint"] = at  # the image holds this count or a smaller one (it counts while dumped)
        facts["after_checkpoint"] = self.observe(cid)
        facts["still_counting"] = self.wait_count(rootfs, at + 5)
        facts["at_delete"] = self.counter(rootfs)
        facts["counts_at_delete"] = len(_counts(rootfs))
        facts["delete_original"] = self.cmd("delete", "--force", cid)
        facts["restore"] = self.cmd("restore", "-d", "--image-path", image, "--bundle", bundle, cid)
        facts["restore_log_error"] = _criu_errors(os.path.join(image, "restore.log"))
        if facts["restore"]["rc"] == 0:
            last = (facts["at_delete"] or (0, 0))[1]
            # the first count written after the restore: the image's, not the deleted one's
            deadline = time.monotonic() + 60
            first = None
            while time.monotonic() < deadline:
                value = self.counter(rootfs)
                if value and value[1] != last:
                    first = value
                    break
                time.sleep(0.02)
            facts["first_after_restore"] = first
            facts["restored"] = self.observe(cid)
            facts["delete"] = self.cmd("delete", "--force", cid)
            facts["counts"] = _counts(rootfs)
        return facts

    def pre_dump(self) -> dict[str, Any]:
        """--pre-dump, then a dump with --parent-path (only the pages changed since), restored."""
        cid = f"criu-pre-{os.getpid()}"
        bundle, rootfs, facts = self.start(cid)
        if facts["create"]["rc"]:
            return facts
        facts["before"] = self.wait_count(rootfs, 5)
        base = os.path.join(self.base, "img-pre")
        facts["pre_dump"] = self.cmd("checkpoint", "--pre-dump", "--image-path", os.path.join(base, "parent"), cid)
        facts["pre_dump_log_error"] = _criu_errors(os.path.join(base, "parent", "dump.log"))
        facts["after_pre_dump"] = self.observe(cid)
        facts["checkpoint"] = self.cmd("checkpoint", "--image-path", os.path.join(base, "final"),
                                       "--parent-path", "../parent", cid)
        facts["dump_log_error"] = _criu_errors(os.path.join(base, "final", "dump.log"))
        facts["parent_link"] = (os.readlink(os.path.join(base, "final", "parent"))
                                if os.path.islink(os.path.join(base, "final", "parent")) else None)
        at = (self.counter(rootfs) or (0, 0))[1]
        facts["restore"] = self.cmd("restore", "-d", "--image-path", os.path.join(base, "final"), "--bundle",
                                    bundle, cid)
        facts["restore_log_error"] = _criu_errors(os.path.join(base, "final", "restore.log"))
        if facts["restore"]["rc"] == 0:
            facts["at_checkpoint"] = at
            facts["after_restore"] = self.wait_count(rootfs, at)
            facts["restored"] = self.observe(cid)
            facts["delete"] = self.cmd("delete", "--force", cid)
        return facts

    def file_binds(self) -> dict[str, Any]:
        """podman's files (/etc/hostname, /etc/hosts, /etc/resolv.conf, /run/.containerenv), each a
        bind of a file of one tmpfs directory: criu must take every one as external (as runc's)."""
        cid = f"criu-files-{os.getpid()}"
        userdata = os.path.join(self.base, "userdata")
        os.mkdir(userdata)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", userdata], check=True)
        names = {"hostname": "/etc/hostname", "hosts": "/etc/hosts", "resolv.conf": "/etc/resolv.conf",
                 ".containerenv": "/run/.containerenv"}
        mounts = []
        for name, dest in names.items():
            with open(os.path.join(userdata, name), "w") as f:
                f.write(f"{name}\n")
            mounts.append({"destination": dest, "type": "bind", "source": os.path.join(userdata, name),
                           "options": ["bind", "rprivate"]})
        try:
            bundle, rootfs, facts = self.start(cid, mounts=mounts, prepare=_resolv_conf_symlink)
            if facts["create"]["rc"]:
                return facts
            facts["before"] = self.wait_count(rootfs, 5)
            pid = self.observe(cid).get("pid")
            facts["mountinfo"] = [line for line in (_read(f"/proc/{pid}/mountinfo") or "").splitlines()
                                  if " - tmpfs " in line]
            image = os.path.join(self.base, "img-files")
            facts["checkpoint"] = self.cmd("checkpoint", "--leave-running", "--image-path", image, cid)
            log_text = _read(os.path.join(image, "dump.log")) or ""
            facts["dump_log_error"] = _criu_errors(os.path.join(image, "dump.log"))
            # criu's "Found VAL mapping for ./DEST mountpoint": each bind was taken as external
            facts["mappings"] = [line.split("mnt: ", 1)[-1] for line in log_text.splitlines()
                                 if " mapping for " in line][:20]
            facts["delete_original"] = self.cmd("delete", "--force", cid)
            if facts["checkpoint"]["rc"] == 0:
                facts.update(self.restore_reading(image, bundle, cid, names.values()))
                if "restored" in facts:
                    facts["delete"] = self.cmd("delete", "--force", cid)
                    facts["imported"] = self.imported(image, bundle, names)
            return facts
        finally:
            subprocess.run(["umount", "-l", userdata], check=False)

    def restore_reading(self, image: str, bundle: str, cid: str, dests: Iterable[str]) -> dict[str, Any]:
        """restore -d of image as cid from bundle, criu's errors, and, restored, the container's
        state and the content of each of dests seen inside it."""
        restore = self.cmd("restore", "-d", "--image-path", image, "--bundle", bundle, cid)
        facts: dict[str, Any] = {"restore": restore,
                                 "restore_log_error": _criu_errors(os.path.join(image, "restore.log"))}
        if facts["restore"]["rc"] == 0:
            facts["restored"] = self.observe(cid)
            rpid = facts["restored"].get("pid")
            facts["restored_files"] = {dest: _read(f"/proc/{rpid}/root{dest}") for dest in dests}
        return facts

    def imported(self, image: str, bundle: str, names: dict[str, str]) -> dict[str, Any]:
        """The image restored under a new id into a fresh rootfs, as `podman container restore
        --import --name NEW` does: the mountpoints pyouki made at create (/etc, /run and the
        files in them) are missing there, and restore makes them before criu runs."""
        cid = f"criu-import-{os.getpid()}"
        workdir = os.path.join(self.base, cid)
        os.mkdir(workdir)
        fresh = self.drv.make_bundle(workdir, False, None, ["true"])
        shutil.copy(os.path.join(bundle, "config.json"), os.path.join(fresh, "config.json"))
        rootfs = os.path.join(fresh, "rootfs")
        _resolv_conf_symlink(rootfs)  # the image's own files come with the import
        facts: dict[str, Any] = {"fresh_has_run": os.path.exists(os.path.join(rootfs, "run"))}
        facts.update(self.restore_reading(image, fresh, cid, names.values()))
        if "restored" in facts:
            facts["counting_on"] = self.wait_count(rootfs, 0) is not None  # the shell writes the new rootfs
            facts["delete"] = self.cmd("delete", "--force", cid)
        return facts

    def foreground(self) -> dict[str, Any]:
        """restore without --detach: the container's stdout becomes restore's (its old pipe is
        replaced), restore waits for it and exits with its status, and deletes it; --pid-file."""
        cid = f"criu-fg-{os.getpid()}"
        self.COUNTER = self.COUNTER.replace("sleep 0.2", 'echo "count $i"; sleep 0.2')
        # prestart and createRuntime run at create and again in the restore (runc's order), with
        # the state of the moment: one JSON line each, appended
        hook_out = os.path.join(self.base, "hooks.out")
        hook = {"path": "/bin/sh", "args": ["sh", "-c", f"cat >> {hook_out}; echo \" $0\" >> {hook_out}"]}
        hooks = {"prestart": [{**hook, "args": [*hook["args"], "prestart"]}],
                 "createRuntime": [{**hook, "args": [*hook["args"], "createRuntime"]}]}
        bundle, rootfs, facts = self.start(cid, hooks)
        if facts["create"]["rc"]:
            return facts
        facts["before"] = self.wait_count(rootfs, 5)
        image = os.path.join(self.base, "img-fg")
        facts["checkpoint"] = self.cmd("checkpoint", "--image-path", image, cid)
        at = (self.counter(rootfs) or (0, 0))[1]
        facts["at_checkpoint"] = at
        pid_file = os.path.join(self.base, "fg.pid")
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen([*self.drv.PYOUKI, "--root", self.root, "restore", "--image-path", image,
                                     "--pid-file", pid_file, "--bundle", bundle, cid],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True)
            assert proc.stdout is not None
            import select

            # the restored shell's line, through restore's stdout (bounded: a wrong fd would hang)
            ready, _, _ = select.select([proc.stdout], [], [], 90)
            facts["stdout_line"] = proc.stdout.readline().strip() if ready else None
            # the shell runs as soon as criu has restored it; the record (then the pid file) is
            # written once criu is done: an engine waits for the pid file, so does this
            facts["pid_file"] = _wait_file(pid_file, 90)
            facts["restored"] = self.observe(cid)
            facts["kill"] = self.cmd("kill", cid, "KILL")
            try:
                facts["restore_rc"] = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                facts["restore_rc"] = "timeout"
            proc.stdout.close()
            err.seek(0)
            facts["restore_stderr"] = err.read().strip()
        facts["after_exit"] = self.observe(cid)  # deleted, as `run` does
        facts["hooks"] = (_read(hook_out) or "").splitlines()
        return facts

    def run(self) -> dict[str, Any]:
        res = subprocess.run(["criu", "--version"], capture_output=True, text=True, timeout=60)
        out: dict[str, Any] = {"uid": os.getuid(), "criu": res.stdout.strip()}
        try:
            for name, fn in (("stopped", self.stopped), ("leave_running", self.leave_running),
                             ("pre_dump", self.pre_dump), ("foreground", self.foreground),
                             ("file_binds", self.file_binds)):
                _progress(f"{self.name}: {name}")
                started = time.monotonic()
                try:
                    out[name] = fn()
                except Exception:
                    out[name] = {"error": traceback.format_exc()}
                out[name]["seconds"] = round(time.monotonic() - started, 2)
        finally:
            for fd in self.pipes:
                os.close(fd)
            shutil.rmtree(self.base, ignore_errors=True)
        return out


def _resolv_conf_symlink(rootfs: str) -> None:
    """An image whose /etc/resolv.conf is a symlink (systemd-resolved's stub, dangling in the
    image): the bind lands on its target, and criu's key must be the target (runc's SecureJoin)."""
    os.makedirs(os.path.join(rootfs, "etc"), exist_ok=True)
    os.symlink("../run/resolv.real", os.path.join(rootfs, "etc/resolv.conf"))


def _counts(rootfs: str) -> list[int]:
    """Every count the container's shell appended to /counts (a last partial line dropped)."""
    return [int(x) for x in (_read(os.path.join(rootfs, "counts")) or "").split() if x.isdigit()]


def _criu_errors(path: str) -> list[str]:
    """The Error lines of a criu log (the whole log is too long for the results)."""
    return [line for line in (_read(path) or "").splitlines() if "Error" in line][:10]


def _progress(msg: str) -> None:
    """A line on stderr (the guest log), so a hung run shows where it stopped."""
    print(f"[{time.monotonic():.1f}] {msg}", file=sys.stderr, flush=True)


def _wait_file(path: str, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = _read(path)
        if text:
            return text
        time.sleep(0.1)
    return None


def run_part_as_user(name: str) -> dict[str, Any]:
    """The part as the test user through a PAM login (XDG_RUNTIME_DIR and the user bus set)."""
    env = {k: os.environ[k] for k in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYOUKI_BUSYBOX") if k in os.environ}
    argv = ["systemd-run", "-P", "--wait", "-q", "-p", "PAMName=login", f"--uid={TEST_UID}",
            f"--working-directory={os.getcwd()}", *(f"--setenv={k}={v}" for k, v in env.items()),
            "--", sys.executable, str(HERE / "guest.py"), "--part", name]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    if res.returncode:
        return {"error": f"exit {res.returncode}: {res.stderr[-3000:]}"}
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def environment() -> dict[str, Any]:
    """The kernel and the cgroup tree the tests ran on."""
    user_cg = f"/sys/fs/cgroup/user.slice/user-{TEST_UID}.slice/user@{TEST_UID}.service"
    return {
        "kernel": os.uname().release,
        "root_controllers": _read("/sys/fs/cgroup/cgroup.controllers"),
        "user_controllers": _read(os.path.join(user_cg, "cgroup.controllers")),
        "user_subtree_control": _read(os.path.join(user_cg, "cgroup.subtree_control")),
        "cgroup2": "cgroup2" in (_read("/proc/self/mounts") or ""),
        "systemd": _read("/proc/1/comm"),
        "uptime": _read("/proc/uptime"),
    }


def _part(name: str) -> Part:
    if name.endswith("-criu"):
        return CriuPart(name)
    return AppArmorPart(name) if name.endswith("-apparmor") else Part(name)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--part"]:
        print(json.dumps(_part(argv[1]).run()))
        return 0
    results: dict[str, Any] = {"env": environment()}
    # PYOUKI_VM_PARTS (set through tests/vm/vm.py): a subset, to work on one part
    parts = [p for p in PARTS if p in (os.environ.get("PYOUKI_VM_PARTS") or "").split(",")] or list(PARTS)
    for name in parts:
        _progress(f"part {name}")
        started = time.monotonic()
        try:
            results[name] = run_part_as_user(name) if name.startswith("rootless") else _part(name).run()
        except Exception:
            results[name] = {"error": traceback.format_exc()}
        results[name]["seconds"] = round(time.monotonic() - started, 2)
        with open(argv[0] + ".partial", "w") as f:
            json.dump(results, f, indent=1)
    results["ok"] = all("error" not in results[name] for name in parts)
    with open(argv[0] + ".part", "w") as f:
        json.dump(results, f, indent=1)
    os.rename(argv[0] + ".part", argv[0])
    _progress("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
