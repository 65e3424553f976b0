"""Run real pyouki containers with --systemd-cgroup against a real systemd (no pytest here).

    python3 check_driver.py rootful    # as root: the system manager
    python3 check_driver.py rootless   # as a logged-in user: the user manager
    python3 check_driver.py dead-bus   # as a user, DBUS_SESSION_BUS_ADDRESS at a dead socket

Runs inside the nspawn container (tests/test_systemd_driver.py) with the repo at /src and the
host's static busybox at /opt/busybox; the qemu VM (tests/vm/guest.py) reuses its helpers.
nspawn's cgroup v2 tree has no controllers (the host keeps them on v1): the lifecycle's
containers ask for no limits, and each limit (LIMITS) must be refused, at create and at update,
leaving nothing behind. Enforced limits are the qemu tier's. Prints the facts it observed as
one JSON line for the pytest side to assert on; always kills and deletes its containers.
"""

from __future__ import annotations

import contextlib
import json
import marshal
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from pyouki.dbus_native import messages
from pyouki.dbus_native.systemd import SystemdManager

MiB = 1024 * 1024
CGROUP_ROOT = "/sys/fs/cgroup"
BUSYBOX = os.environ.get("PYOUKI_BUSYBOX", "/opt/busybox")
PYOUKI = [sys.executable, "-c", "import sys; from pyouki.cli.main import main; sys.exit(main())"]
RESOURCES = {
    "memory": {"limit": 64 * MiB},
    "pids": {"limit": 42},
    "cpu": {"shares": 512, "quota": 50_000, "period": 100_000},
}
# each one alone, refused without its controller: memory goes with the cgroup set-up, pids once
# init is forked, cpu with both of its unit properties
LIMITS = {"memory.limit": {"memory": {"limit": 64 * MiB}}, "pids.limit": {"pids": {"limit": 42}},
          "cpu.shares": {"cpu": {"shares": 512, "quota": 50_000}}}
UNIT_PROPS = ("Delegate", "MemoryMax", "TasksMax", "CPUWeight", "CPUQuotaPerSecUSec", "Slice",
              "ControlGroup")


def pyouki(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
           command: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the pyouki command from /src's tree.

    Output goes to files, not pipes: a created container inherits pyouki's stdio and would
    keep a pipe open (and the caller waiting) for as long as it runs.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        rc = subprocess.run([*(command or PYOUKI), *args], stdout=out, stderr=err, timeout=timeout, env=env,
                            stdin=subprocess.DEVNULL).returncode
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(args, rc, out.read(), err.read())


def make_bundle(base: str, rootless: bool, cgroups_path: str | None, args: list[str],
                resources: dict[str, Any] | None = None) -> str:
    """A busybox bundle from `pyouki spec`, with resources (default RESOURCES) and cgroupsPath."""
    bundle = os.path.join(base, "bundle")
    rootfs = os.path.join(bundle, "rootfs")
    os.makedirs(os.path.join(rootfs, "bin"))
    shutil.copy2(BUSYBOX, os.path.join(rootfs, "bin/busybox"))
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    for d in ("proc", "sys", "dev", "tmp"):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    res = pyouki("spec", *(["--rootless"] if rootless else []), "--bundle", bundle)
    if res.returncode:
        raise SystemExit(f"pyouki spec failed: {res.stderr}")
    with open(os.path.join(bundle, "config.json")) as f:
        config = json.load(f)
    config["process"]["terminal"] = False
    config["process"]["args"] = args
    config["linux"]["resources"] = json.loads(json.dumps(RESOURCES if resources is None else resources))
    if cgroups_path:
        config["linux"]["cgroupsPath"] = cgroups_path
    else:
        config["linux"].pop("cgroupsPath", None)
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(config, f)
    return bundle


# pyouki with -X importtime: the full path (not pyouki.cli.hot) imports its parser
IMPORTTIME = [sys.executable, "-X", "importtime", *PYOUKI[1:]]
FULL_PATH_ONLY = "pyouki.cli.fastparse"


def fast_path(*args: str, env: dict[str, str] | None = None) -> bool:
    """Whether `pyouki ARGS` succeeded on the fast path (pyouki.cli.hot), which reads a systemd
    record's cgroup through the cgroupfs state it keeps, without D-Bus."""
    res = pyouki(*args, env=env, command=IMPORTTIME)
    return res.returncode == 0 and FULL_PATH_ONLY not in res.stderr


def unit_facts(sd: SystemdManager, unit: str) -> dict[str, Any]:
    """What systemd says about the unit and what its cgroup holds."""
    if not sd.unit_exists(unit):
        return {"exists": False}
    iface = "org.freedesktop.systemd1.Slice" if unit.endswith(".slice") else messages.SCOPE_INTERFACE
    props = sd.get_unit_properties(unit, iface)
    facts: dict[str, Any] = {k: props.get(k) for k in UNIT_PROPS}
    facts["exists"] = True
    facts["ActiveState"] = sd.get_unit_property(unit, messages.UNIT_INTERFACE, "ActiveState")
    cgroup = CGROUP_ROOT + str(props["ControlGroup"])
    with open(os.path.join(cgroup, "cgroup.procs")) as f:
        facts["procs"] = sorted(int(p) for p in f.read().split())
    facts["cgroup_owner"] = os.stat(cgroup).st_uid
    facts["files"] = {name: _read(os.path.join(cgroup, name))
                      for name in ("memory.max", "pids.max", "cpu.max", "cpu.weight", "cgroup.controllers")}
    return facts


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def proc_cgroup(pid: int) -> str:
    """The unified-hierarchy line of /proc/PID/cgroup."""
    with open(f"/proc/{pid}/cgroup") as f:
        return next(line.split(":", 2)[2] for line in f.read().splitlines() if line.startswith("0::"))


def update_answer(root: str, cid: str, resources: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """`pyouki update --resources FILE`: its exit status and stderr."""
    fd, path = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(resources, f)
    res = pyouki("--root", root, "update", "--resources", path, cid, env=env)
    os.unlink(path)
    return {"rc": res.returncode, "stderr": res.stderr.strip()}


def update(root: str, cid: str, resources: dict[str, Any], env: dict[str, str]) -> str:
    """`pyouki update --resources` when the command exists, else the driver's set_resources."""
    probe = pyouki("update", "--help", env=env)
    if probe.returncode == 0:
        fd, path = tempfile.mkstemp(suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(resources, f)
        res = pyouki("--root", root, "update", "--resources", path, cid, env=env)
        os.unlink(path)
        if res.returncode:
            raise SystemExit(f"pyouki update failed: {res.stderr}")
        return "command"
    from pyouki.cgroups import manager_from_state
    from pyouki.state import Container

    container = Container(root, cid)
    container.load()
    mgr = manager_from_state(container.record["cgroup"])
    assert mgr is not None
    mgr.set_resources(resources)
    return "set_resources"


def join_verbs(root: str, cid: str, base: str, env: dict[str, str]) -> dict[str, Any]:
    """exec (detached and foreground), ps, pause and resume of a running container, through the
    command line as an engine drives them; exec must join the existing unit, not start it again."""
    facts: dict[str, Any] = {}
    pidfile = os.path.join(base, "exec.pid")
    res = pyouki("--root", root, "exec", "--detach", "--pid-file", pidfile, cid, "sleep", "600", env=env)
    facts["exec"] = {"rc": res.returncode, "stderr": res.stderr.strip()}
    if res.returncode == 0:
        with open(pidfile) as f:
            xpid = int(f.read())
        facts["exec_pid"] = xpid
        facts["exec_cgroup"] = proc_cgroup(xpid)
    res = pyouki("--root", root, "exec", cid, "true", env=env)
    facts["exec_fg"] = {"rc": res.returncode, "stderr": res.stderr.strip()}
    res = pyouki("--root", root, "ps", "--format", "json", cid, env=env)
    facts["ps"] = sorted(json.loads(res.stdout)) if res.returncode == 0 else res.stderr.strip()
    facts["pause_rc"] = pyouki("--root", root, "pause", cid, env=env).returncode
    facts["paused"] = json.loads(pyouki("--root", root, "state", cid, env=env).stdout)["status"]
    facts["resume_rc"] = pyouki("--root", root, "resume", cid, env=env).returncode
    facts["resumed"] = json.loads(pyouki("--root", root, "state", cid, env=env).stdout)["status"]
    if "exec_cgroup" in facts:
        # exec --cgroup: a sub-cgroup the caller made in the unit's (delegated) cgroup, cgroup v2's form
        os.mkdir(f"/sys/fs/cgroup{facts['exec_cgroup']}/sub")
        subpid = os.path.join(base, "sub.pid")
        res = pyouki("--root", root, "exec", "--detach", "--pid-file", subpid, "--cgroup", "sub", cid, "sleep", "600",
                     env=env)
        facts["exec_sub"] = {"rc": res.returncode, "stderr": res.stderr.strip()}
        if res.returncode == 0:
            with open(subpid) as f:
                facts["exec_sub"]["cgroup"] = proc_cgroup(int(f.read()))
        res = pyouki("--root", root, "exec", "--cgroup", "memory:sub", cid, "true", env=env)
        facts["exec_sub_v1_form"] = {"rc": res.returncode, "stderr": res.stderr.strip()}
    return facts


def lifecycle(rootless: bool, cgroups_path: str | None, cid: str) -> dict[str, Any]:
    """create → read back → start → update → freeze/thaw → exec/ps/pause → kill → delete, with facts
    at each step. The container asks for no limits (device rules rootful); update with nothing to
    change succeeds, update with a limit is refused and leaves the unit as it was."""
    env = dict(os.environ)
    base = tempfile.mkdtemp(prefix="pyouki-driver-")
    root = os.path.join(base, "state")
    facts: dict[str, Any] = {"id": cid}
    sd = SystemdManager.connect(user=rootless, timeout=10)
    try:
        bundle = make_bundle(base, rootless, cgroups_path, ["sleep", "600"], resources={})
        res = pyouki("--root", root, "--systemd-cgroup", "create", "--bundle", bundle, cid, env=env)
        facts["create"] = {"rc": res.returncode, "stderr": res.stderr.strip()}
        if res.returncode:
            return facts
        state = json.loads(pyouki("--root", root, "state", cid, env=env).stdout)
        pid = int(state["pid"])
        facts["pid"] = pid
        from pyouki.state import Container

        container = Container(root, cid)
        container.load()
        record = container.record["cgroup"]
        facts["record"] = record
        unit = record["unit"]
        facts["created"] = unit_facts(sd, unit)
        facts["proc_cgroup"] = proc_cgroup(pid)
        if not rootless:
            from pyouki.cgroups import _bpf

            facts["device_programs"] = _bpf.attached_program_count(CGROUP_ROOT + facts["created"]["ControlGroup"])
        facts["fast_path"] = {"state created": fast_path("--root", root, "state", cid, env=env)}
        res = pyouki("--root", root, "start", cid, env=env, command=IMPORTTIME)
        facts["start_rc"] = res.returncode
        facts["fast_path"]["start"] = res.returncode == 0 and FULL_PATH_ONLY not in res.stderr
        facts["fast_path"]["state running"] = fast_path("--root", root, "state", cid, env=env)
        facts["fast_path"]["kill 0"] = fast_path("--root", root, "kill", cid, "0", env=env)
        facts["update_nothing"] = update_answer(root, cid, {"memory": {"limit": 0}, "cpu": {"shares": 0}}, env)
        facts["update_limits"] = {field: update_answer(root, cid, limit, env) for field, limit in LIMITS.items()}
        facts["updated"] = unit_facts(sd, unit)
        from pyouki.cgroups import manager_from_state

        mgr = manager_from_state(record)
        assert mgr is not None
        mgr.freeze()
        facts["frozen"] = [mgr.state(), _read(os.path.join(CGROUP_ROOT + facts["created"]["ControlGroup"],
                                                            "cgroup.events"))]
        mgr.thaw()
        facts["thawed"] = mgr.state()
        facts["manager_pids"] = sorted(mgr.pids())
        facts.update(join_verbs(root, cid, base, env))
        # SIGKILL of a paused container: kill thaws while systemd removes the emptied scope
        pyouki("--root", root, "pause", cid, env=env)
        res = pyouki("--root", root, "kill", cid, "KILL", env=env)
        facts["kill_paused"] = {"rc": res.returncode, "stderr": res.stderr.strip()}
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.02)
        facts["killed"] = not os.path.exists(f"/proc/{pid}")
        res = pyouki("--root", root, "delete", cid, env=env)
        facts["delete"] = {"rc": res.returncode, "stderr": res.stderr.strip()}
        facts["deleted"] = unit_facts(sd, unit)
        facts["cgroup_left"] = os.path.exists(CGROUP_ROOT + facts["created"]["ControlGroup"])
        facts["state_left"] = os.listdir(root) if os.path.isdir(root) else []
    finally:
        pyouki("--root", root, "delete", "--force", cid, env=env)
        unit = (facts.get("record") or {}).get("unit")
        if unit:
            with contextlib.suppress(Exception):
                sd.stop_unit(unit, timeout=10)
        sd.close()
        shutil.rmtree(base, ignore_errors=True)
    return facts


def _running(marker: str) -> list[int]:
    """Pids whose command line is `sleep MARKER`."""
    out = []
    for p in os.listdir("/proc"):
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if f.read() == f"sleep\0{marker}\0".encode():
                    out.append(int(p))
        except (OSError, ValueError):
            pass
    return out


def refused_creates(rootless: bool) -> dict[str, Any]:
    """A create with each limit of LIMITS alone: refused, with no unit, state or process left."""
    out: dict[str, Any] = {}
    with SystemdManager.connect(user=rootless, timeout=10) as sd:
        for n, (field, limit) in enumerate(LIMITS.items()):
            base = tempfile.mkdtemp(prefix="pyouki-refused-")
            root = os.path.join(base, "state")
            cid = f"refused-{n}-{os.getpid()}"
            marker = str(7000 + n)
            try:
                bundle = make_bundle(base, rootless, None, ["sleep", marker], resources=limit)
                res = pyouki("--root", root, "--systemd-cgroup", "create", "--bundle", bundle, cid)
                out[field] = {"rc": res.returncode, "stderr": res.stderr.strip(),
                              "state_left": os.listdir(root) if os.path.isdir(root) else [],
                              "processes": _running(marker), "unit_left": sd.unit_exists(f"pyouki-{cid}.scope")}
            finally:
                pyouki("--root", root, "delete", "--force", cid)
                shutil.rmtree(base, ignore_errors=True)
    return out


def failed_create(rootless: bool) -> dict[str, Any]:
    """A resource that fails after the unit exists (a cgroupfs write) must take the unit with it.

    The nspawn container's cgroup tree has no memory controller, so ``unified`` memory.high
    fails with the field named, after StartTransientUnit succeeded.
    """
    base = tempfile.mkdtemp(prefix="pyouki-failed-")
    root = os.path.join(base, "state")
    cid = f"failed-{os.getpid()}"
    unit = f"pyouki-{cid}.scope"
    facts: dict[str, Any] = {"unit": unit}
    try:
        bundle = make_bundle(base, rootless, None, ["sleep", "600"],
                             resources={"unified": {"memory.high": "1048576"}})
        res = pyouki("--root", root, "--systemd-cgroup", "create", "--bundle", bundle, cid)
        facts["create"] = {"rc": res.returncode, "stderr": res.stderr.strip()}
        facts["state_left"] = os.listdir(root) if os.path.isdir(root) else []
        facts["sleepers"] = [p for p in os.listdir("/proc") if p.isdigit() and _read(f"/proc/{p}/comm") == "sleep"]
        with SystemdManager.connect(user=rootless, timeout=10) as sd:
            facts["unit_left"] = sd.unit_exists(unit)
    finally:
        pyouki("--root", root, "delete", "--force", cid)
        shutil.rmtree(base, ignore_errors=True)
    return facts


# `pyouki ARGS` with every D-Bus call it makes (and each wait for a signal) written to stderr as
# one "DBUS-CALLS ..." line: the round trips a verb costs.
_COUNTED = """
import sys
from jeepney import HeaderFields
from pyouki.dbus_native import connection
calls = []
call, wait_for = connection.Connection.call, connection.Connection.wait_for
def counted_call(self, msg, *args, **kwargs):
    calls.append(msg.header.fields.get(HeaderFields.member, "?"))
    return call(self, msg, *args, **kwargs)
def counted_wait(self, *args, **kwargs):
    calls.append("(signal)")
    return wait_for(self, *args, **kwargs)
connection.Connection.call, connection.Connection.wait_for = counted_call, counted_wait
from pyouki.cli.main import main
try:
    rc = main(sys.argv[1:])  # returns, where main() would _exit
finally:
    sys.stderr.write("DBUS-CALLS " + " ".join(calls) + "\\n")
sys.exit(rc)
"""


def counted(*args: str) -> tuple[subprocess.CompletedProcess[str], list[str] | None]:
    """pyouki(*args) and the D-Bus calls it made, in order (Hello, ..., "(signal)" for a job wait)."""
    res = pyouki(*args, command=[sys.executable, "-c", _COUNTED])
    lines = res.stderr.splitlines()
    # None when the wrapper printed no count: an assertion of "no calls" must not pass by default
    calls = next((line.split()[1:] for line in lines if line.startswith("DBUS-CALLS")), None)
    res.stderr = "".join(line + "\n" for line in lines if not line.startswith("DBUS-CALLS"))
    return res, calls


def _runtime_unit_dir(rootless: bool) -> str:
    """Where a drop-in for a transient unit goes: the runtime configuration of the (user) manager."""
    if rootless:
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "systemd", "user")
    return "/run/systemd/system"


def delete_cases(rootless: bool) -> dict[str, Any]:
    """delete of a container whose process exited (systemd has collected its scope), of a running
    one (--force), of one whose unit failed (a stop that timed out, as an OOM kill fails it), and
    of an exited one whose record predates CollectMode ("legacy"): the unit is gone afterwards
    (not left "failed"), nothing is left, the name can be used again; with the D-Bus calls each
    delete made and the scope's CollectMode."""
    out: dict[str, Any] = {}
    with SystemdManager.connect(user=rootless, timeout=10) as sd:
        for case in ("exited", "running", "failed", "legacy"):
            out[case] = _delete_case(sd, rootless, case)
    return out


def _delete_case(sd: SystemdManager, rootless: bool, case: str) -> dict[str, Any]:
    base = tempfile.mkdtemp(prefix="pyouki-delete-")
    root = os.path.join(base, "state")
    cid = f"del-{case}-{os.getpid()}"
    unit = f"pyouki-{cid}.scope"
    dropin = os.path.join(_runtime_unit_dir(rootless), unit + ".d")
    facts: dict[str, Any] = {}
    try:
        if case == "failed":
            # sleep, init of the container's pid namespace, ignores SIGTERM from outside: the stop
            # times out, systemd SIGKILLs it and the scope stays loaded, "failed"
            os.makedirs(dropin, exist_ok=True)
            with open(os.path.join(dropin, "timeout.conf"), "w") as f:
                f.write("[Scope]\nTimeoutStopSec=1\n")
            subprocess.run(["systemctl", *(["--user"] if rootless else []), "daemon-reload"], check=True)
        bundle = make_bundle(base, rootless, None, ["sleep", "600"], resources={})
        res = pyouki("--root", root, "--systemd-cgroup", "create", "--bundle", bundle, cid)
        facts["create"] = {"rc": res.returncode, "stderr": res.stderr.strip()}
        if res.returncode:
            return facts
        pid = int(json.loads(pyouki("--root", root, "state", cid).stdout)["pid"])
        cgroup = CGROUP_ROOT + str(sd.get_unit_property(unit, messages.SCOPE_INTERFACE, "ControlGroup"))
        facts["collect_mode"] = sd.get_unit_property(unit, messages.UNIT_INTERFACE, "CollectMode")
        pyouki("--root", root, "start", cid)
        if case == "legacy":  # a record written before scopes had CollectMode: the driver deletes it
            record_path = os.path.join(root, cid, "state.bin")
            with open(record_path, "rb") as f:
                record = marshal.load(f)
            record["cgroup"].pop("collect")
            with open(record_path, "wb") as f:
                marshal.dump(record, f)
        if case in ("exited", "legacy"):
            pyouki("--root", root, "kill", cid, "KILL")
        elif case == "failed":
            sd.stop_unit(unit, timeout=10)
        deadline = time.monotonic() + 10
        while case != "running" and (os.path.exists(f"/proc/{pid}") or os.path.exists(cgroup)) \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        facts["before"] = {"unit": sd.unit_exists(unit) and sd.get_unit_property(unit, messages.UNIT_INTERFACE,
                                                                                  "ActiveState"),
                           "cgroup": os.path.exists(cgroup)}
        res, calls = counted("--root", root, "delete", *(["--force"] if case == "running" else []), cid)
        facts["delete"] = {"rc": res.returncode, "stderr": res.stderr.strip()}
        facts["calls"] = calls
        facts["unit_left"] = sd.unit_exists(unit)
        facts["cgroup_left"] = os.path.exists(cgroup)
        facts["state_left"] = os.listdir(root) if os.path.isdir(root) else []
        res = pyouki("--root", root, "--systemd-cgroup", "create", "--bundle", bundle, cid)
        facts["again"] = {"rc": res.returncode, "stderr": res.stderr.strip()}
    finally:
        pyouki("--root", root, "delete", "--force", cid)
        if os.path.isdir(dropin):
            shutil.rmtree(dropin)
            subprocess.run(["systemctl", *(["--user"] if rootless else []), "daemon-reload"], check=False)
        with contextlib.suppress(Exception):
            sd.stop_unit(unit, timeout=10)
            sd.reset_failed(unit)
        shutil.rmtree(base, ignore_errors=True)
    return facts


def dead_bus() -> dict[str, Any]:
    """--systemd-cgroup with the user bus at a dead socket and no private socket: a clean failure."""
    base = tempfile.mkdtemp(prefix="pyouki-deadbus-")
    cid = f"deadbus-{os.getpid()}"
    root = os.path.join(base, "state")
    dead = os.path.join(base, "bus")
    s = socket.socket(socket.AF_UNIX)
    s.bind(dead)
    s.close()  # the socket file stays and nobody listens: connection refused
    runtime_dir = os.path.join(base, "runtime")
    os.mkdir(runtime_dir, 0o700)
    env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS=f"unix:path={dead}", XDG_RUNTIME_DIR=runtime_dir)
    facts: dict[str, Any] = {"dead": dead, "runtime_dir": runtime_dir}
    try:
        bundle = make_bundle(base, True, None, ["sleep", "600"])
        res = pyouki("--root", root, "--systemd-cgroup", "create", "--bundle", bundle, cid, env=env, timeout=60)
        facts["create"] = {"rc": res.returncode, "stderr": res.stderr.strip()}
        facts["state_left"] = os.listdir(root) if os.path.isdir(root) else []
        facts["sleepers"] = [p for p in os.listdir("/proc") if p.isdigit() and _read(f"/proc/{p}/comm") == "sleep"]
        with SystemdManager.connect(user=True, timeout=10) as sd:
            facts["unit_left"] = sd.unit_exists(f"pyouki-{cid}.scope")
    finally:
        pyouki("--root", root, "delete", "--force", cid, env=env)
        shutil.rmtree(base, ignore_errors=True)
    return facts


def main() -> int:
    mode = sys.argv[1]
    out: dict[str, Any]
    if mode == "rootful":
        out = {"default": lifecycle(False, None, f"rootful-{os.getpid()}"),
               "explicit": lifecycle(False, f"machine.slice:pyt:explicit-{os.getpid()}", f"ex-{os.getpid()}"),
               "failed": failed_create(False),
               "delete_cases": delete_cases(False),
               "refused": refused_creates(False),
               "slice": lifecycle(False, f"system.slice:pyt:pyt-{os.getpid()}.slice", f"sl-{os.getpid()}")}
    elif mode == "rootless":
        out = {"default": lifecycle(True, None, f"rootless-{os.getpid()}"),
               "explicit": lifecycle(True, f"app.slice:pyt:explicit-{os.getpid()}", f"ex-{os.getpid()}"),
               "failed": failed_create(True),
               "delete_cases": delete_cases(True),
               "refused": refused_creates(True),
               "uid": os.getuid()}
    elif mode == "dead-bus":
        out = dead_bus()
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
