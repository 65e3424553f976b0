"""The verbs engines call besides the lifecycle: pause/resume, ps, kill --all, update, events,
features, checkpoint/restore and --version, against real containers and real cgroups.

Cgroup-backed tests run as root with a unique cgroupsPath, so the files can be read back from
/sys/fs/cgroup/<controller>/<path> whatever the runtime (pyouki or runc). Rootless on this host
(cgroup v1, no delegation) there is no cgroup: those verbs must fail with a clear message.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Bundle, Runner, RuntimeInfo, assert_failed_cleanly, pid_alive, wait_pid_gone

CGROUP_ROOT = Path("/sys/fs/cgroup")
SCHEMA_DIR = Path(__file__).parent / "fixtures" / "runtime-spec-schema"
PODMAN_UPDATE = Path(__file__).parent / "fixtures" / "clients" / "podman-update-resources.json"
# A container that counts forever (so a frozen one visibly stops), with a child in the background.
COUNTER = "sleep 1000 & i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.01; done"
# Two background children and a ready marker; init waits for them.
FAMILY = "sleep 1000 & sleep 1000 & touch /tmp/ready; wait"

root_only = pytest.mark.parametrize("mode", ["root"])
rootless_only = pytest.mark.parametrize("mode", ["rootless"])


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll predicate until it holds or timeout passes; return its last value."""
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


def proc_state(pid: int) -> str:
    """The one-letter state of pid from /proc/PID/stat."""
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return data[data.rindex(b")") + 2 :].split()[0].decode()


def read_count(bundle: Bundle) -> str:
    """The COUNTER container's last value (empty while it rewrites the file)."""
    try:
        return (bundle.rootfs / "tmp" / "count").read_text().strip()
    except OSError:
        return ""


def cg(controller: str, path: str, name: str) -> str:
    """A cgroup v1 file of the container, read from the host."""
    return (CGROUP_ROOT / controller / path.lstrip("/") / name).read_text().strip()


@pytest.fixture
def cgroup_path() -> Iterator[str]:
    """A unique cgroupsPath; whatever is left there after the test is removed."""
    path = f"/pyouki-ev-{uuid.uuid4().hex[:10]}"
    yield path
    for hierarchy in sorted(os.listdir(CGROUP_ROOT)):
        d = CGROUP_ROOT / hierarchy / path.lstrip("/")
        if d.is_dir() and not d.is_symlink():
            try:
                d.rmdir()
            except OSError:
                pass


def running(runner: Runner, bundle: Bundle, script: str, cgroup_path: str | None = None,
            resources: dict[str, Any] | None = None) -> str:
    """Run script detached in bundle (with a cgroupsPath when given); return the container id."""
    bundle.config["process"]["args"] = ["sh", "-c", script]
    if cgroup_path:
        bundle.linux["cgroupsPath"] = cgroup_path
    if resources:
        bundle.linux["resources"] = resources
    bundle.write()
    cid = runner.new_id()
    runner.run(cid, bundle, "-d").ok()
    return cid


def container_pids(runner: Runner) -> set[int]:
    """Host pids of the container's processes: they carry the runner's marker in their environment."""
    return set(runner.leftover_pids())


# ------------------------------------------------------------------------------------------------
# pause / resume
# ------------------------------------------------------------------------------------------------


@root_only
def test_pause_and_resume(runner: Runner, bundle: Bundle, cgroup_path: str) -> None:
    cid = running(runner, bundle, COUNTER, cgroup_path)
    assert wait_for(lambda: read_count(bundle) != "")
    assert wait_for(lambda: len(container_pids(runner)) >= 2)
    # podman calls pause/resume with nothing but XDG_RUNTIME_DIR, empty when rootful
    minimal_env = {"XDG_RUNTIME_DIR": ""}
    runner.cmd("pause", cid, env=minimal_env).ok()

    assert runner.state(cid)["status"] == "paused"
    listed = json.loads(runner.cmd("list", "--format", "json").ok().stdout)
    assert [c["status"] for c in listed if c["id"] == cid] == ["paused"]
    assert cg("freezer", cgroup_path, "freezer.state") == "FROZEN"
    pids = container_pids(runner)
    # a v1-frozen task shows D (in the refrigerator), a v2-frozen one T/S; never R
    assert all(proc_state(p) in ("D", "T", "t") for p in pids), {p: proc_state(p) for p in pids}
    frozen_at = read_count(bundle)
    time.sleep(0.3)
    assert read_count(bundle) == frozen_at, "a paused container kept running"

    runner.cmd("resume", cid, env=minimal_env).ok()
    assert runner.state(cid)["status"] == "running"
    assert cg("freezer", cgroup_path, "freezer.state") == "THAWED"
    assert wait_for(lambda: read_count(bundle) not in ("", frozen_at)), "the counter did not resume"
    runner.delete(cid, "--force").ok()


@root_only
def test_resume_of_running_container_fails(runner: Runner, bundle: Bundle, cgroup_path: str,
                                           runtime: RuntimeInfo) -> None:
    cid = running(runner, bundle, "sleep 1000", cgroup_path)
    r = runner.cmd("resume", cid)
    assert_failed_cleanly(runtime, r, cid, "not paused")
    assert runner.state(cid)["status"] == "running"
    runner.delete(cid, "--force").ok()


@root_only
def test_pause_of_stopped_container_fails(runner: Runner, bundle: Bundle, runtime: RuntimeInfo) -> None:
    bundle.sh("true")
    cid = runner.new_id()
    runner.run(cid, bundle, "--keep").ok()
    r = runner.cmd("pause", cid)
    assert_failed_cleanly(runtime, r, cid, "stopped")
    runner.delete(cid).ok()


@root_only
def test_delete_force_of_paused_container(runner: Runner, bundle: Bundle, cgroup_path: str) -> None:
    cid = running(runner, bundle, FAMILY, cgroup_path)
    assert wait_for(lambda: (bundle.rootfs / "tmp" / "ready").exists())
    init = runner.state(cid)["pid"]
    runner.cmd("pause", cid).ok()
    runner.delete(cid, "--force").ok()
    assert wait_pid_gone(init)
    assert wait_for(lambda: not container_pids(runner))
    assert runner.state_entries() == []
    assert not (CGROUP_ROOT / "freezer" / cgroup_path.lstrip("/")).exists()


@rootless_only
def test_pause_refused_without_cgroup(runner: Runner, bundle: Bundle, runtime: RuntimeInfo) -> None:
    cid = running(runner, bundle, "sleep 1000")
    r = runner.cmd("pause", cid, env={"XDG_RUNTIME_DIR": str(runner.xdg)})
    assert_failed_cleanly(runtime, r, f"cannot pause container {cid}", "no cgroup", "rootless")
    assert runner.state(cid)["status"] == "running"
    r = runner.cmd("resume", cid)
    assert_failed_cleanly(runtime, r, cid)
    runner.delete(cid, "--force").ok()


# ------------------------------------------------------------------------------------------------
# ps and kill --all
# ------------------------------------------------------------------------------------------------


def test_ps_json(runner: Runner, bundle: Bundle, xfail_runc: Callable[[str], None]) -> None:
    if runner.rootless:
        xfail_runc("runc finds processes only through the cgroup, which rootless v1 has not")
    cid = running(runner, bundle, FAMILY)
    assert wait_for(lambda: (bundle.rootfs / "tmp" / "ready").exists())
    assert wait_for(lambda: len(container_pids(runner)) == 3)
    r = runner.cmd("ps", "--format", "json", cid).ok()
    pids = json.loads(r.stdout)
    assert isinstance(pids, list) and all(isinstance(p, int) for p in pids)
    assert set(pids) == container_pids(runner)
    assert runner.state(cid)["pid"] in pids
    runner.kill(cid, "KILL").ok()
    assert runner.wait_status(cid, "stopped") == "stopped"
    assert json.loads(runner.cmd("ps", "--format", "json", cid).ok().stdout) in ([], None)
    runner.delete(cid).ok()


def test_ps_table(runner: Runner, bundle: Bundle, xfail_runc: Callable[[str], None]) -> None:
    if runner.rootless:
        xfail_runc("runc finds processes only through the cgroup, which rootless v1 has not")
    cid = running(runner, bundle, FAMILY)
    # both children must have exec'd sleep (a forked child is still "sh" for a moment)
    assert wait_for(lambda: len(container_pids(runner)) == 3 and len(_sleepers(runner)) == 2)
    want = container_pids(runner)

    lines = runner.cmd("ps", cid).ok().stdout.splitlines()  # default: ps -ef
    header = lines[0].split()
    assert "PID" in header and "CMD" in header
    col = header.index("PID")
    assert {int(ln.split()[col]) for ln in lines[1:]} == want

    # everything after the id goes to ps, dashes and all
    lines = runner.cmd("ps", cid, "-o", "pid,comm").ok().stdout.splitlines()
    assert lines[0].split() == ["PID", "COMMAND"]
    rows = [ln.split() for ln in lines[1:]]
    assert {int(pid) for pid, _ in rows} == want
    assert sorted(comm for _, comm in rows) == ["sh", "sleep", "sleep"]
    runner.delete(cid, "--force").ok()


@root_only
def test_kill_all_through_the_cgroup(runner: Runner, bundle: Bundle, cgroup_path: str) -> None:
    # init ignores TERM (set after forking, so its children do not): --all TERM must stop the
    # children and leave init running; --all KILL then ends everything
    cid = running(runner, bundle, "sleep 1000 & sleep 1000 & trap '' TERM; touch /tmp/ready; "
                                  "while :; do sleep 0.05; done", cgroup_path)
    assert wait_for(lambda: (bundle.rootfs / "tmp" / "ready").exists())
    init = runner.state(cid)["pid"]
    assert wait_for(lambda: len(_sleepers(runner)) == 2)
    runner.kill(cid, "--all", "TERM").ok()
    assert wait_for(lambda: not _sleepers(runner))
    assert pid_alive(init)
    assert runner.state(cid)["status"] == "running"

    runner.kill(cid, "--all", "KILL").ok()
    assert runner.wait_status(cid, "stopped") == "stopped"
    assert wait_for(lambda: not container_pids(runner))
    assert wait_for(lambda: cg("pids", cgroup_path, "cgroup.procs") == "")
    runner.delete(cid).ok()


def _sleepers(runner: Runner) -> list[int]:
    """The container's `sleep 1000` processes."""
    return [p for p in container_pids(runner) if _cmdline(p) == "sleep 1000"]


@root_only
def test_kill_all_of_paused_container(runner: Runner, bundle: Bundle, cgroup_path: str) -> None:
    cid = running(runner, bundle, FAMILY, cgroup_path)
    assert wait_for(lambda: (bundle.rootfs / "tmp" / "ready").exists())
    runner.cmd("pause", cid).ok()
    runner.kill(cid, "--all", "KILL").ok()
    assert runner.wait_status(cid, "stopped") == "stopped"
    assert wait_for(lambda: not container_pids(runner))
    runner.delete(cid).ok()


@root_only
def test_sigkill_of_paused_container_kills_it(runner: Runner, bundle: Bundle, cgroup_path: str) -> None:
    # runc signals init, then thaws for SIGKILL: podman waits for the exit file, containerd for
    # the task's exit; a frozen init would never die (cgroup v1)
    cid = running(runner, bundle, COUNTER, cgroup_path)
    assert wait_for(lambda: read_count(bundle) != "")
    init = runner.state(cid)["pid"]
    runner.cmd("pause", cid).ok()
    runner.kill(cid, "TERM").ok()  # any other signal waits for resume: still paused
    assert runner.state(cid)["status"] == "paused"
    runner.kill(cid, "KILL").ok()
    assert wait_pid_gone(init)
    assert runner.wait_status(cid, "stopped") == "stopped"
    assert cg("freezer", cgroup_path, "freezer.state") == "THAWED"
    assert wait_for(lambda: not container_pids(runner))
    runner.delete(cid).ok()


@root_only
def test_kill_all_of_stopped_container_reaches_what_is_left(runner: Runner, bundle: Bundle,
                                                            cgroup_path: str) -> None:
    # without a pid namespace of its own, init's children outlive it in the cgroup; CRI's
    # `kill --all ID 9` after the exit must reach them (runc: status 0, processes signalled)
    bundle.linux["namespaces"] = [ns for ns in bundle.linux["namespaces"] if ns["type"] != "pid"]
    cid = running(runner, bundle, "sleep 1000 & exit 0", cgroup_path)
    assert runner.wait_status(cid, "stopped") == "stopped"
    assert wait_for(lambda: len(container_pids(runner)) == 1), "the orphaned sleep"
    runner.kill(cid, "--all", "9").ok()
    assert wait_for(lambda: not container_pids(runner))
    runner.kill(cid, "--all", "9").ok()  # nothing left: still no error
    runner.delete(cid).ok()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------------
# update
# ------------------------------------------------------------------------------------------------


@root_only
def test_update_flags(runner: Runner, bundle: Bundle, cgroup_path: str) -> None:
    cid = running(runner, bundle, "sleep 1000", cgroup_path)
    runner.cmd("update", "--memory", "64m", "--memory-reservation", "32m", "--pids-limit", "50",
               "--cpu-share", "512", "--cpu-period", "100000", "--cpu-quota", "50000", cid).ok()
    assert cg("memory", cgroup_path, "memory.limit_in_bytes") == str(64 << 20)
    assert cg("memory", cgroup_path, "memory.soft_limit_in_bytes") == str(32 << 20)
    assert cg("pids", cgroup_path, "pids.max") == "50"
    assert cg("cpu", cgroup_path, "cpu.shares") == "512"
    assert cg("cpu", cgroup_path, "cpu.cfs_quota_us") == "50000"
    # a flag not given leaves its value alone
    runner.cmd("update", "--memory", "128m", cid).ok()
    assert cg("memory", cgroup_path, "memory.limit_in_bytes") == str(128 << 20)
    assert cg("pids", cgroup_path, "pids.max") == "50"
    assert cg("cpu", cgroup_path, "cpu.shares") == "512"
    runner.cmd("update", "--pids-limit", "-1", "--cpu-quota", "-1", cid).ok()
    assert cg("pids", cgroup_path, "pids.max") == "max"
    assert cg("cpu", cgroup_path, "cpu.cfs_quota_us") == "-1"
    runner.delete(cid, "--force").ok()


@root_only
def test_update_resources_from_stdin(runner: Runner, bundle: Bundle, cgroup_path: str) -> None:
    """The containerd shim's `update --resources -`, every field present, zero meaning unchanged."""
    cid = running(runner, bundle, "sleep 1000", cgroup_path, {"pids": {"limit": 40}})
    doc = {
        "memory": {"limit": 48 << 20, "reservation": 0, "swap": 0},
        "cpu": {"shares": 256, "quota": 0, "period": 0, "realtimeRuntime": 0, "realtimePeriod": 0,
                "cpus": "", "mems": ""},
        "blockIO": {"weight": 0},
        "pids": {"limit": 0},
    }
    stdin = runner.workdir / "resources.json"
    stdin.write_text(json.dumps(doc))
    with open(stdin, "rb") as f:
        runner.cmd("update", "--resources", "-", cid, stdin=f).ok()
    assert cg("memory", cgroup_path, "memory.limit_in_bytes") == str(48 << 20)
    assert cg("cpu", cgroup_path, "cpu.shares") == "256"
    assert cg("pids", cgroup_path, "pids.max") == "40"
    runner.delete(cid, "--force").ok()


@root_only
def test_update_podman_resources_file(runner: Runner, bundle: Bundle, cgroup_path: str) -> None:
    """podman: `update --resources=FILE ID`, one argv element with '='."""
    cid = running(runner, bundle, "sleep 1000", cgroup_path)
    runner.cmd("update", f"--resources={PODMAN_UPDATE}", cid).ok()
    want = json.loads(PODMAN_UPDATE.read_text())["cpu"]["shares"]
    assert cg("cpu", cgroup_path, "cpu.shares") == str(want)
    runner.delete(cid, "--force").ok()


@root_only
def test_update_errors_name_the_field(runner: Runner, bundle: Bundle, cgroup_path: str,
                                      runtime: RuntimeInfo) -> None:
    cid = running(runner, bundle, "sleep 1000", cgroup_path)
    before = cg("memory", cgroup_path, "memory.limit_in_bytes")
    bad = runner.workdir / "bad.json"
    bad.write_text(json.dumps({"memory": {"limit": "lots"}}))
    assert_failed_cleanly(runtime, runner.cmd("update", "-r", str(bad), cid), "memory.limit")
    bad.write_text(json.dumps({"cpu": {"cpus": "nonsense"}}))
    assert_failed_cleanly(runtime, runner.cmd("update", "-r", str(bad), cid), "linux.resources.cpu.cpus")
    assert_failed_cleanly(runtime, runner.cmd("update", "--memory", "lots", cid), "--memory")
    assert_failed_cleanly(runtime, runner.cmd("update", "-r", str(runner.workdir / "missing.json"), cid),
                          "missing.json")
    assert cg("memory", cgroup_path, "memory.limit_in_bytes") == before
    runner.delete(cid, "--force").ok()


@rootless_only
def test_update_refused_without_cgroup(runner: Runner, bundle: Bundle, runtime: RuntimeInfo) -> None:
    cid = running(runner, bundle, "sleep 1000")
    r = runner.cmd("update", "--memory", "64m", cid)
    assert_failed_cleanly(runtime, r, f"cannot update container {cid}", "no cgroup")
    runner.delete(cid, "--force").ok()


# ------------------------------------------------------------------------------------------------
# events
# ------------------------------------------------------------------------------------------------


def _check_stats_event(event: dict[str, Any], cid: str) -> None:
    assert event["type"] == "stats" and event["id"] == cid
    data = event["data"]
    for key in ("cpu", "memory", "pids", "blkio", "hugetlb", "cpuset"):
        assert isinstance(data[key], dict), key
    assert isinstance(data["cpu"]["usage"]["total"], int) and data["cpu"]["usage"]["total"] > 0
    assert isinstance(data["cpu"]["usage"]["percpu"], list)
    assert data["memory"]["usage"]["usage"] > 0
    assert data["pids"]["current"] >= 2
    assert "network_interfaces" in data


@root_only
def test_events_stats(runner: Runner, bundle: Bundle, cgroup_path: str) -> None:
    cid = running(runner, bundle, "sleep 1000 & wait", cgroup_path)
    assert wait_for(lambda: len(container_pids(runner)) == 2)
    out = runner.cmd("events", "--stats", cid).ok().stdout
    lines = out.splitlines()
    assert len(lines) == 1, out
    _check_stats_event(json.loads(lines[0]), cid)
    runner.delete(cid, "--force").ok()


@root_only
def test_events_stream(runner: Runner, bundle: Bundle, cgroup_path: str) -> None:
    cid = running(runner, bundle, "sleep 1000 & wait", cgroup_path)
    assert wait_for(lambda: len(container_pids(runner)) == 2)
    proc = runner.popen("events", "--interval", "100ms", cid)
    try:
        assert proc.stdout is not None
        for _ in range(2):
            _check_stats_event(json.loads(proc.stdout.readline()), cid)
    finally:
        proc.kill()
        proc.wait()
    runner.delete(cid, "--force").ok()


@root_only
def test_events_ends_when_container_stops(runner: Runner, bundle: Bundle, cgroup_path: str,
                                          xfail_runc: Callable[[str], None]) -> None:
    xfail_runc("runc events keeps polling a stopped container")
    cid = running(runner, bundle, "sleep 1000 & wait", cgroup_path)
    proc = runner.popen("events", "--interval", "100ms", cid)
    try:
        assert proc.stdout is not None
        json.loads(proc.stdout.readline())
        runner.kill(cid, "--all", "KILL").ok()
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    runner.delete(cid).ok()


@root_only
def test_events_reports_oom(runner: Runner, bundle: Bundle, cgroup_path: str) -> None:
    """An OOM kill inside the container becomes a {"type":"oom"} event while events runs."""
    limit = 16 << 20
    cid = running(runner, bundle, "while [ ! -e /tmp/go ]; do sleep 0.05; done; tail /dev/zero; sleep 1000",
                  cgroup_path, {"memory": {"limit": limit, "swap": limit}})
    proc = runner.popen("events", "--interval", "100ms", cid)
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["type"] == "stats"
        (bundle.rootfs / "tmp" / "go").touch()  # now tail grows until the OOM killer ends it
        seen = []
        deadline = time.monotonic() + 30
        while "oom" not in seen and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            event = json.loads(line)
            assert event["id"] == cid
            seen.append(event["type"])
        assert "oom" in seen, seen
    finally:
        proc.kill()
        proc.wait()
    runner.delete(cid, "--force").ok()


def test_events_bad_interval(runner: Runner, bundle: Bundle, runtime: RuntimeInfo) -> None:
    cid = running(runner, bundle, "sleep 1000")
    assert_failed_cleanly(runtime, runner.cmd("events", "--interval", "soon", cid), "--interval")
    assert_failed_cleanly(runtime, runner.cmd("events", "--interval", "0s", cid), "greater than 0")
    runner.delete(cid, "--force").ok()


@rootless_only
def test_events_refused_without_cgroup(runner: Runner, bundle: Bundle, runtime: RuntimeInfo,
                                       xfail_runc: Callable[[str], None]) -> None:
    xfail_runc("rootless runc prints stats of zeros when it has no cgroup")
    cid = running(runner, bundle, "sleep 1000")
    assert_failed_cleanly(runtime, runner.cmd("events", "--stats", cid), cid, "no cgroup")
    runner.delete(cid, "--force").ok()


# ------------------------------------------------------------------------------------------------
# features, checkpoint, version
# ------------------------------------------------------------------------------------------------


def _features_validator() -> Any:
    from jsonschema import Draft4Validator
    from referencing import Registry
    from referencing.jsonschema import DRAFT4

    docs = {p.name: json.loads(p.read_text()) for p in SCHEMA_DIR.glob("*.json")}
    registry = Registry().with_resources((name, DRAFT4.create_resource(doc)) for name, doc in docs.items())
    return Draft4Validator(docs["features-schema.json"], registry=registry)


@root_only
def test_features_validates_against_the_schema(runner: Runner, is_pyouki: bool) -> None:
    doc = json.loads(runner.cmd("features", root=None).ok().stdout)
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in _features_validator().iter_errors(doc)]
    assert errors == []
    assert doc["ociVersionMin"] <= doc["ociVersionMax"]
    if not is_pyouki:
        return
    linux = doc["linux"]
    # only what pyouki really does
    assert sorted(doc["hooks"]) == sorted(["prestart", "createRuntime", "createContainer", "startContainer",
                                           "poststart", "poststop"])
    assert "tmpcopyup" not in doc["mountOptions"] and {"idmap", "ridmap"} <= set(doc["mountOptions"])
    assert {"ro", "rbind", "rro", "rprivate", "nosymfollow"} <= set(doc["mountOptions"])
    assert sorted(linux["namespaces"]) == ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"]
    assert "CAP_SYS_ADMIN" in linux["capabilities"] and "CAP_CHECKPOINT_RESTORE" in linux["capabilities"]
    assert linux["cgroup"]["v1"] and linux["cgroup"]["v2"] and linux["cgroup"]["systemd"]
    assert linux["seccomp"]["enabled"] and "SCMP_ACT_NOTIFY" in linux["seccomp"]["actions"]
    assert set(linux["seccomp"]["supportedFlags"]) <= set(linux["seccomp"]["knownFlags"])
    # supported by the runtime (runtime-spec: "irrelevant to the availability ... on the host")
    assert linux["apparmor"] == {"enabled": True} and linux["selinux"] == {"enabled": True}
    assert linux["mountExtensions"]["idmap"] == {"enabled": True}


def test_features_bad_document_is_caught() -> None:
    """The validator itself works: a document with a wrong namespace name is rejected."""
    bad = {"ociVersionMin": "1.0.0", "ociVersionMax": "1.3.0", "linux": {"namespaces": ["pidd"]}}
    assert list(_features_validator().iter_errors(bad))


@root_only
def test_checkpoint_fails_cleanly_where_criu_cannot_dump(runner: Runner, bundle: Bundle,
                                                         runtime: RuntimeInfo) -> None:
    """criu cannot dump on this host's kernel (tests/vm/ checkpoints and restores on Debian's):
    one line naming criu's reason and its log, and the container keeps running."""
    cid = running(runner, bundle, "sleep 1000")
    image, work = runner.workdir / "checkpoint", runner.workdir / "criu-work"
    r = runner.cmd("checkpoint", "--image-path", str(image), "--work-path", str(work), cid)
    if r.returncode == 0:
        runner.delete(cid, "--force")
        pytest.skip("criu can dump on this kernel: tests/test_vm_enforcement.py covers checkpoint/restore")
    assert_failed_cleanly(runtime, r, "checkpoint failed: criu: ", f"(log: {work}/dump.log)")
    if runtime.is_pyouki:
        # criu's own reason, not a generic failure
        assert "it cannot work on this kernel" in r.stderr or "Error" not in r.stderr
        assert (work / "dump.log").exists()
    assert runner.state(cid)["status"] == "running"
    r = runner.cmd("restore", "--image-path", str(image), "--bundle", str(bundle.path), runner.new_id())
    assert_failed_cleanly(runtime, r, f"--image-path: {image} holds no checkpoint")
    assert runner.list_ids() == [cid]  # nothing left of the failed restore
    runner.delete(cid, "--force").ok()


@rootless_only
def test_checkpoint_rootless_needs_root(runner: Runner, bundle: Bundle, runtime: RuntimeInfo,
                                        xfail_runc: Callable[[str], None]) -> None:
    """criu needs root: one line saying so, before criu runs; the container goes on."""
    xfail_runc("runc only warns, then criu fails")
    cid = running(runner, bundle, "sleep 1000")
    r = runner.cmd("checkpoint", "--image-path", str(runner.workdir / "i"), cid)
    assert_failed_cleanly(runtime, r, "checkpoint needs root")
    assert not (runner.workdir / "i").exists()
    assert runner.state(cid)["status"] == "running"
    r = runner.cmd("restore", "--image-path", str(runner.workdir / "i"), "--bundle", str(bundle.path),
                   runner.new_id())
    assert_failed_cleanly(runtime, r, "restore needs root")
    assert runner.list_ids() == [cid]
    runner.delete(cid, "--force").ok()


@root_only
def test_checkpoint_restore_flags(runner: Runner, bundle: Bundle, runtime: RuntimeInfo,
                                  xfail_runc: Callable[[str], None]) -> None:
    """runc's flags are accepted; a wrong value is refused before criu runs, naming the flag."""
    xfail_runc("runc passes a wrong --manage-cgroups-mode to criu")
    cid = running(runner, bundle, "sleep 1000")
    r = runner.cmd("checkpoint", "--manage-cgroups-mode", "bogus", "--image-path", str(runner.workdir / "i"), cid)
    assert_failed_cleanly(runtime, r, "--manage-cgroups-mode: invalid value 'bogus'")
    r = runner.cmd("checkpoint", "--empty-ns", "pid", "--image-path", str(runner.workdir / "i"), cid)
    assert_failed_cleanly(runtime, r, "--empty-ns: 'pid' is not supported")
    assert runner.state(cid)["status"] == "running"
    runner.delete(cid, "--force").ok()
    # only a running (or paused) container: runc's words for the others
    created = runner.new_id()
    runner.cmd("create", "--bundle", str(bundle.path), created).ok()
    r = runner.cmd("checkpoint", "--image-path", str(runner.workdir / "i"), created)
    assert_failed_cleanly(runtime, r, f"cannot checkpoint container {created}: container not running (created)")
    runner.delete(created, "--force").ok()
    r = runner.cmd("checkpoint", "--image-path", str(runner.workdir / "i"), created)
    assert_failed_cleanly(runtime, r, f"{created}: container does not exist")
    # podman's capability check: `checkpoint --help` succeeds when the runtime supports it
    for verb in ("checkpoint", "restore"):
        h = runner.cmd(verb, "--help", root=None)
        assert h.returncode == 0, h
        assert "--image-path" in h.stdout and "--manage-cgroups-mode" in h.stdout


@root_only
def test_version(runner: Runner) -> None:
    lines = runner.cmd("--version", root=None, env={"XDG_RUNTIME_DIR": ""}).ok().stdout.splitlines()
    assert lines[0].startswith(f"{runner.runtime.name} version ")
    spec = [ln for ln in lines if ln.startswith("spec: ")]
    assert len(spec) == 1 and spec[0].split()[1].startswith("1.")


# ------------------------------------------------------------------------------------------------
# the command line: pure logic, the fast parser and click must agree
# ------------------------------------------------------------------------------------------------


def _parse_both(argv: list[str]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(command, options, args) as the fast parser and as click see argv."""
    from pyouki.cli import clickapp
    from pyouki.cli.fastparse import parse

    seen = []
    fast = parse(argv)
    if fast is not None:
        seen.append((fast.command.name, fast.options, fast.args))

    def dispatch(cmd: Any, globals_: dict[str, Any], options: dict[str, Any], args: dict[str, Any]) -> int:
        seen.append((cmd.name, options, args))
        return 0

    assert clickapp.main(argv, dispatch) == 0
    return seen


def test_cli_exec_trailing_args_and_repeated_options() -> None:
    argv = ["exec", "-e", "A=1", "--env=B=2", "-t", "--cap", "CAP_KILL", "-g", "10", "-g", "11",
            "cid", "sh", "-c", "echo -e x", "--env", "C=3"]
    both = _parse_both(argv)
    assert len(both) == 2 and both[0] == both[1]
    name, options, args = both[0]
    assert name == "exec"
    assert options["env"] == ["A=1", "B=2"] and options["caps"] == ["CAP_KILL"]
    assert options["additional_gids"] == ["10", "11"] and options["tty"] is True
    assert args["container-id"] == "cid"
    assert args["command"] == ["sh", "-c", "echo -e x", "--env", "C=3"]


def test_cli_exec_process_file_without_command() -> None:
    both = _parse_both(["exec", "--process", "/p.json", "--detach", "--pid-file", "/x.pid", "cid"])
    assert both[0] == both[-1]
    _, options, args = both[0]
    assert options["process_file"] == "/p.json" and options["detach"] is True
    assert args == {"container-id": "cid", "command": []}


def test_cli_ps_args_and_update_values() -> None:
    both = _parse_both(["ps", "--format", "json", "cid", "-o", "pid"])
    assert both[0] == both[-1] and both[0][2] == {"container-id": "cid", "ps-args": ["-o", "pid"]}
    both = _parse_both(["update", "--cpu-quota", "-1", "--cpu-shares", "2", "--resources=-", "cid"])
    assert both[0] == both[-1]
    options = both[0][1]
    assert (options["cpu_quota"], options["cpu_share"], options["resources"]) == ("-1", "2", "-")


def test_update_flag_parsing() -> None:
    from pyouki.errors import PyoukiError
    from pyouki.update import effective, ram_in_bytes, resources_from_flags

    assert ram_in_bytes("64m") == 64 << 20 and ram_in_bytes("1.5g") == 3 << 29
    assert ram_in_bytes("512KiB") == 512 << 10 and ram_in_bytes("100") == 100
    got = resources_from_flags({"memory": "64m", "memory_swap": "-1", "cpu_quota": "-1", "cpu_share": "512",
                                "cpuset_cpus": "0-1", "pids_limit": "20", "blkio_weight": None})
    assert got == {"memory": {"limit": 64 << 20, "swap": -1}, "cpu": {"quota": -1, "shares": 512, "cpus": "0-1"},
                   "pids": {"limit": 20}}
    for bad in ({"cpu_share": "-2"}, {"memory": "12x"}, {"blkio_weight": "70000"}, {"mem_bw_schema": "L3:0=f"}):
        with pytest.raises(PyoukiError):
            resources_from_flags(bad)
    # zero/empty means unchanged; device rules are never touched by an update
    assert effective({"cpu": {"shares": 0, "cpus": "", "quota": -1}, "pids": {"limit": 0},
                      "devices": [{"allow": True}], "memory": {"swappiness": 0}}) == \
        {"cpu": {"quota": -1}, "memory": {"swappiness": 0}}


def test_events_interval_parsing() -> None:
    from pyouki.errors import PyoukiError
    from pyouki.events import parse_interval

    assert parse_interval("5s") == 5 and parse_interval("100ms") == 0.1
    assert parse_interval("1m30s") == 90 and parse_interval("1.5h") == 5400
    for bad in ("", "5", "s", "0s", "-1s", "5 parsecs"):
        with pytest.raises(PyoukiError):
            parse_interval(bad)

