"""The whole container lifecycle through the Python API, without the CLI: every verb.

Run in the test process (as root) by tests/test_api.py, and as a script by the unprivileged
test user (`python api_scenario.py ROOT BUNDLE RUN_BUNDLE ID`), which prints the observations as
one JSON object. Observations, not assertions: the test asserts on them for both modes alike.
The bundle's process must exit 7 on SIGTERM and run until then; RUN_BUNDLE's must exit 5.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pyouki


def _outcome(call: Any) -> dict[str, Any]:
    """"ok" with the call's value, or the error's type name and message."""
    try:
        return {"ok": True, "value": call()}
    except pyouki.PyoukiError as e:
        return {"ok": False, "type": type(e).__name__, "message": str(e),
                "path": getattr(e, "path", None)}


def scenario(root: str, bundle: str, run_bundle: str, cid: str) -> dict[str, Any]:
    """Drive create, state, list, get, start, exec, ps, pause, resume, update, events, kill, wait,
    delete and run; return what each gave."""
    out: dict[str, Any] = {}
    rt = pyouki.Runtime(root=root)
    out["rootless"] = rt.rootless
    c = rt.create(cid, bundle=bundle)
    st = c.state()
    out["created"] = {"status": st.status, "pid": st.pid, "bundle": st.bundle, "annotations": st.annotations,
                      "handle_pid": c.pid}
    out["exists"] = _outcome(lambda: rt.create(cid, bundle=bundle))
    out["list"] = [x.id for x in rt.list()]
    out["get_pid"] = rt.get(cid).pid
    out["not_found"] = _outcome(lambda: rt.get("no-such-container"))
    c.start()
    out["started"] = c.state().status

    r, w = os.pipe()
    p = c.exec(["sh", "-c", 'echo "$GREETING"; exit 3'], env={"GREETING": "hi"}, stdout=w)
    os.close(w)
    out["exec_status"] = p.wait()
    with os.fdopen(r, "rb") as f:
        out["exec_output"] = f.read().decode()
    p2 = c.exec(["sleep", "100"])
    p2.kill("KILL")
    out["exec_killed_status"] = p2.wait()

    out["ps"] = _outcome(c.ps)
    out["ps_has_init"] = c.pid in (out["ps"].get("value") or [])
    out["pause"] = _outcome(c.pause)
    out["paused_status"] = c.state().status
    out["resume"] = _outcome(c.resume)
    out["resumed_status"] = c.state().status
    out["resume_not_paused"] = _outcome(c.resume)
    out["update"] = _outcome(lambda: c.update(resources={"pids": {"limit": 64}}))
    stats = _outcome(lambda: next(c.events(stats=True)))
    out["events"] = {k: v for k, v in stats.items() if k != "value"}
    if stats["ok"]:
        out["events"]["type"] = stats["value"]["type"]
        out["events"]["pids_limit"] = stats["value"]["data"].get("pids", {}).get("limit")

    out["delete_running"] = _outcome(c.delete)
    c.kill("TERM")
    out["wait"] = c.wait()
    out["wait_again"] = c.wait()  # cached: init was reaped by the first wait
    out["stopped_status"] = c.state().status
    out["kill_stopped"] = _outcome(lambda: c.kill("KILL"))
    c.delete()
    out["after_delete"] = _outcome(lambda: rt.get(cid))
    out["left_in_root"] = sorted(e for e in os.listdir(root) if e != ".cache")

    out["run"] = pyouki.run(run_bundle, cid + "-run", root=root)
    out["left_after_run"] = sorted(e for e in os.listdir(root) if e != ".cache")
    return out


if __name__ == "__main__":
    print(json.dumps(scenario(*sys.argv[1:5])))
