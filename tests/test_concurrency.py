"""Many containers at once, and two commands racing on one id."""

from __future__ import annotations

import copy
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from harness import Bundle, Runner, wait_pid_gone

N_CONTAINERS = 20


def _lifecycle(runner: Runner, bundle: Bundle, cid: str) -> str:
    """create, start, wait for stopped, delete; return "" or what went wrong."""
    r = runner.create(cid, bundle)
    if r.returncode:
        return f"create {cid}: {r}"
    r = runner.start(cid)
    if r.returncode:
        return f"start {cid}: {r}"
    st = runner.wait_status(cid, "stopped", timeout=60)
    if st != "stopped":
        return f"{cid} ended as {st}"
    r = runner.delete(cid)
    if r.returncode:
        return f"delete {cid}: {r}"
    return ""


def test_parallel_lifecycles(runner: Runner, bundle: Bundle) -> None:
    bundle.sh("echo $$ > /dev/null")
    ids = [runner.new_id(f"par{i}") for i in range(N_CONTAINERS)]
    with ThreadPoolExecutor(max_workers=N_CONTAINERS) as pool:
        problems = [p for p in pool.map(lambda c: _lifecycle(runner, bundle, c), ids) if p]
    assert problems == []
    assert runner.list_ids() == []
    assert runner.state_entries() == []
    assert runner.leftover_pids() == []


def test_parallel_runs_all_report_their_own_exit_code(runner: Runner, bundle: Bundle) -> None:
    bundle.sh('exit "$CODE"')
    results: dict[int, int] = {}
    details: dict[int, str] = {}

    def one(i: int) -> None:
        # a bundle dir per exit code, all sharing the first bundle's rootfs
        d = runner.workdir / f"b{i}"
        d.mkdir()
        if runner.owner:
            os.chown(d, *runner.owner)
        cfg = copy.deepcopy(bundle.config)
        cfg["process"]["env"].append(f"CODE={i}")
        cfg["root"] = {"path": str(bundle.rootfs)}
        mine = Bundle(path=d, config=cfg, owner=runner.owner)
        mine.write()
        r = runner.run(runner.new_id(f"rc{i}"), mine)
        results[i] = r.returncode
        details[i] = str(r)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wrong = [details[i] for i in range(10) if results.get(i) != i]
    assert wrong == [], "\n".join(wrong)
    assert runner.state_entries() == []


def test_create_racing_delete(runner: Runner, bundle: Bundle) -> None:
    bundle.sh("sleep 1000")
    for round_ in range(5):
        cid = runner.new_id(f"race{round_}")
        done = threading.Event()

        def deleter(c: str = cid, done: threading.Event = done) -> None:
            while not done.is_set():
                runner.delete(c, "--force")
                time.sleep(0.005)

        t = threading.Thread(target=deleter)
        t.start()
        try:
            runner.create(cid, bundle)
        finally:
            # let the deleter have one more go after create returned
            time.sleep(0.05)
            done.set()
            t.join()
        # consistent: either the container is fully there (state works) or fully gone
        status = runner.status(cid)
        assert status in (None, "created", "stopped"), status
        if status is not None:
            pid = runner.state(cid)["pid"]
            runner.delete(cid, "--force").ok()
            wait_pid_gone(pid)
        assert runner.status(cid) is None
        assert runner.state_entries() == []
        deadline = time.monotonic() + 5
        while runner.leftover_pids() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert runner.leftover_pids() == [], f"round {round_}: processes left"


def test_parallel_state_queries_while_running(runner: Runner, bundle: Bundle) -> None:
    bundle.sh("sleep 1000")
    cid = runner.new_id()
    runner.run(cid, bundle, "-d").ok()
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: runner.status(cid), range(16)))
    assert statuses == ["running"] * 16
    runner.delete(cid, "--force").ok()
    assert runner.state_entries() == []
