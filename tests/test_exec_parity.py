"""exec as runc 1.1.5 does it: a session of its own, and --cap's sets."""

from __future__ import annotations

from harness import Bundle, Runner

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
