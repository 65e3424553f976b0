"""Rootless pyouki WITHOUT --systemd-cgroup on a unified host (no pytest here).

    python3 check_auto_cgroup.py auto       # logged-in user: the user manager gives a scope
    python3 check_auto_cgroup.py no-bus     # user bus unreachable: no cgroup at all
    python3 check_auto_cgroup.py dead-bus   # a bus socket nobody listens on: the same, after a try
    python3 check_auto_cgroup.py delegated  # inside `systemd-run --user --scope -p Delegate=yes`,
                                            # bus unreachable: a child of the scope's cgroup

Each mode runs its lifecycle with a bundle that asks for no limits, and reports as "refused"
the create of one asking for limits (check_driver.RESOURCES): nspawn's cgroup v2 tree has no
controllers, so they cannot be applied anywhere here (auto: the user manager has none to
enforce them with) and create must refuse them, leaving nothing behind.

Runs inside the nspawn container (tests/test_rootless_auto_cgroup.py) as the user logged in
through PAM, with the repo at /src and busybox at /opt/busybox. Prints one JSON line of facts;
always kills and deletes its containers.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from check_driver import CGROUP_ROOT, _running, join_verbs, make_bundle, proc_cgroup, pyouki, unit_facts

from pyouki.dbus_native.systemd import SystemdManager


def _log(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _no_bus_env(base: str) -> dict[str, str]:
    """The user bus and the private socket pointed at an empty directory."""
    empty = os.path.join(base, "empty-runtime")
    os.mkdir(empty, 0o700)
    return dict(os.environ, DBUS_SESSION_BUS_ADDRESS=f"unix:path={empty}/bus", XDG_RUNTIME_DIR=empty)


def refused(cid: str, env: dict[str, str]) -> dict[str, Any]:
    """create of the bundle with limits: rc, stderr and whether anything was left behind (state,
    the container's process, the unit it would have had)."""
    base = tempfile.mkdtemp(prefix="pyouki-refused-")
    root = os.path.join(base, "state")
    try:
        bundle = make_bundle(base, True, None, ["sleep", "6100"])
        res = pyouki("--root", root, "create", "--bundle", bundle, cid, env=env)
        with SystemdManager.connect(user=True, timeout=10) as sd:
            unit_left = sd.unit_exists(f"pyouki-{cid}.scope")
        return {"rc": res.returncode, "stderr": res.stderr.strip(), "unit_left": unit_left,
                "state_left": os.listdir(root) if os.path.isdir(root) else [], "processes": _running("6100")}
    finally:
        pyouki("--root", root, "delete", "--force", cid, env=env)
        shutil.rmtree(base, ignore_errors=True)


def lifecycle(cid: str, env: dict[str, str], with_unit: bool) -> dict[str, Any]:
    """create (with --debug --log) → read back → start → pause/resume → kill → delete."""
    base = tempfile.mkdtemp(prefix="pyouki-auto-")
    root = os.path.join(base, "state")
    logf = os.path.join(base, "log.json")
    facts: dict[str, Any] = {"id": cid, "caller_cgroup": proc_cgroup(os.getpid())}
    sd = SystemdManager.connect(user=True, timeout=10) if with_unit else None
    try:
        bundle = make_bundle(base, True, None, ["sleep", "600"], resources={})
        res = pyouki("--root", root, "--log", logf, "--log-format", "json", "--debug",
                     "create", "--bundle", bundle, cid, env=env)
        facts["create"] = {"rc": res.returncode, "stderr": res.stderr.strip()}
        facts["log"] = [e["msg"] for e in _log(logf) if e["level"] in ("debug", "warning")]
        if res.returncode:
            return facts
        from pyouki.state import Container

        container = Container(root, cid)
        container.load()
        record = container.record["cgroup"]
        facts["record"] = record
        pid = int(json.loads(pyouki("--root", root, "state", cid, env=env).stdout)["pid"])
        facts["pid"] = pid
        facts["proc_cgroup"] = proc_cgroup(pid)
        if sd is not None and record and record.get("unit"):
            facts["created"] = unit_facts(sd, record["unit"])
        facts["start_rc"] = pyouki("--root", root, "start", cid, env=env).returncode
        facts["status"] = json.loads(pyouki("--root", root, "state", cid, env=env).stdout)["status"]
        if record:
            facts.update(join_verbs(root, cid, base, env))
        pyouki("--root", root, "kill", cid, "KILL", env=env)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.02)
        res = pyouki("--root", root, "delete", cid, env=env)
        facts["delete"] = {"rc": res.returncode, "stderr": res.stderr.strip()}
        if sd is not None and record and record.get("unit"):
            facts["deleted"] = unit_facts(sd, record["unit"])
        fs = (record or {}).get("fs") or record or {}
        facts["cgroup_left"] = bool(fs.get("path")) and os.path.exists(fs["path"])
        facts["state_left"] = os.listdir(root) if os.path.isdir(root) else []
    finally:
        pyouki("--root", root, "delete", "--force", cid, env=env)
        if sd is not None:
            sd.close()
        shutil.rmtree(base, ignore_errors=True)
    return facts


def delegated() -> dict[str, Any]:
    """Run the delegated-inner mode in a Delegate=yes scope of the user manager."""
    res = subprocess.run(["systemd-run", "--user", "--scope", "-q", "-p", "Delegate=yes", "--",
                          sys.executable, os.path.abspath(__file__), "delegated-inner"],
                         capture_output=True, text=True, timeout=120)
    if res.returncode:
        raise SystemExit(f"systemd-run --scope failed: {res.stderr}")
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def main() -> int:
    mode = sys.argv[1]
    pid = os.getpid()
    if mode == "auto":
        out = lifecycle(f"auto-{pid}", dict(os.environ), with_unit=True)
        out["refused"] = refused(f"auto-limits-{pid}", dict(os.environ))
    elif mode == "no-bus":
        base = tempfile.mkdtemp(prefix="pyouki-nobus-")
        try:
            env = _no_bus_env(base)
            out = lifecycle(f"nobus-{pid}", env, with_unit=False)
            out["refused"] = refused(f"nobus-limits-{pid}", env)
        finally:
            shutil.rmtree(base, ignore_errors=True)
    elif mode == "dead-bus":
        base = tempfile.mkdtemp(prefix="pyouki-deadbus-")
        try:
            env = _no_bus_env(base)
            dead = os.path.join(base, "dead-bus")
            s = socket.socket(socket.AF_UNIX)
            s.bind(dead)
            s.close()  # the socket file stays and nobody listens: connection refused
            env["DBUS_SESSION_BUS_ADDRESS"] = f"unix:path={dead}"
            out = lifecycle(f"deadbus-{pid}", env, with_unit=False)
            out["refused"] = refused(f"deadbus-limits-{pid}", env)
        finally:
            shutil.rmtree(base, ignore_errors=True)
    elif mode == "delegated":
        out = delegated()
    elif mode == "delegated-inner":
        base = tempfile.mkdtemp(prefix="pyouki-deleg-")
        try:
            own = CGROUP_ROOT + proc_cgroup(pid)
            env = _no_bus_env(base)
            out = lifecycle(f"deleg-{pid}", env, with_unit=False)
            out["refused"] = refused(f"deleg-limits-{pid}", env)
            out["own_owner"] = os.stat(own).st_uid
            with open(os.path.join(own, "cgroup.procs")) as f:
                out["own_procs_after"] = sorted(int(p) for p in f.read().split())
        finally:
            shutil.rmtree(base, ignore_errors=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    out["uid"] = os.getuid()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
