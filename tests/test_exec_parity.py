"""exec as runc 1.1.5 does it: a session of its own, and --cap's sets."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest
from harness import Bundle, Result, Runner, RuntimeInfo, assert_failed_cleanly

CAP_SYS_ADMIN = 21


def _running(runner: Runner, bundle: Bundle) -> str:
    bundle.sh("sleep 1000")
    cid = runner.new_id()
    runner.create(cid, bundle).ok()
    runner.start(cid).ok()
    return cid


def test_exec_without_tty_leads_its_own_session(runner: Runner, bundle: Bundle) -> None:
    cid = _running(runner, bundle)
    r = runner.cmd("exec", cid, "sh", "-c", "read pid comm st ppid pgrp sid rest < /proc/$$/stat; echo $$ $pgrp $sid")
    pid, pgrp, sid = r.ok().stdout.split()
    assert pid == pgrp == sid, f"setsid: pid {pid}, pgrp {pgrp}, session {sid}"
    runner.delete(cid, "--force").ok()


def test_exec_cap_adds_to_bounding_effective_permitted_only(runner: Runner, bundle: Bundle) -> None:
    cid = _running(runner, bundle)
    r = runner.cmd("exec", "--cap", "CAP_SYS_ADMIN", cid, "grep", "^Cap", "/proc/self/status").ok()
    sets = {line.split(":")[0]: int(line.split()[1], 16) for line in r.stdout.splitlines()}
    bit = 1 << CAP_SYS_ADMIN
    for name in ("CapBnd", "CapEff", "CapPrm"):
        assert sets[name] & bit, f"{name} lacks CAP_SYS_ADMIN: {r.stdout}"
    for name in ("CapInh", "CapAmb"):
        assert not sets[name] & bit, f"{name} has CAP_SYS_ADMIN, runc leaves it out: {r.stdout}"
    runner.delete(cid, "--force").ok()


def _exec_process_file(runner: Runner, cid: str, affinity: dict) -> Result:
    process = {"terminal": False, "user": {"uid": 0, "gid": 0}, "cwd": "/", "env": ["PATH=/bin"],
               "args": ["grep", "Cpus_allowed_list", "/proc/self/status"], "execCPUAffinity": affinity}
    path = runner.workdir / "process.json"
    path.write_text(json.dumps(process))
    os.chmod(path, 0o644)
    return runner.cmd("exec", "--process", str(path), cid)


def test_exec_cpu_affinity(runtime: RuntimeInfo, runner: Runner, bundle: Bundle,
                           xfail_runc: Callable[[str], None]) -> None:
    """process.execCPUAffinity (runtime-spec 1.2): final is the exec'd process's affinity, set in the
    container's cgroup; initial, the runtime's process before it moves there."""
    xfail_runc("1.1.5 predates execCPUAffinity and ignores it")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    last = max(os.sched_getaffinity(0))
    cid = _running(runner, bundle)
    r = _exec_process_file(runner, cid, {"initial": "0", "final": str(last)}).ok()
    assert r.stdout.split() == ["Cpus_allowed_list:", str(last)], r
    r = _exec_process_file(runner, cid, {"final": "4096"})
    assert_failed_cleanly(runtime, r, "process.execCPUAffinity.final")
    r = _exec_process_file(runner, cid, {"initial": "0-x"})
    assert_failed_cleanly(runtime, r, "process.execCPUAffinity.initial")
    runner.delete(cid, "--force").ok()
