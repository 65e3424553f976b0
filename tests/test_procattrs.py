"""linux.personality, process.scheduler, process.ioPriority and linux.memoryPolicy, observed in
real containers: from inside (uname, /proc/self/sched, nice, ionice, /proc/self/numa_maps) and
from the host through the kernel's own view of the container's process (sched_getattr,
ioprio_get, /proc/PID/numa_maps), as root and rootless; and their error cases, each one line
naming the field with nothing left behind.

runc 1.1.5 has none of these (its runs are expected to fail the assertions); crun from Debian
has the personality, compared on the same bundle.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness import THROWAWAY_DEV, Bundle, Runner, RuntimeInfo, assert_failed_cleanly

root_only = pytest.mark.parametrize("mode", ["root"])
rootless_only = pytest.mark.parametrize("mode", ["rootless"])

_libc = ctypes.CDLL(None, use_errno=True)
_NR = {"x86_64": {"sched_getattr": 315, "ioprio_get": 252}, "aarch64": {"sched_getattr": 275, "ioprio_get": 31}}
MACHINE = os.uname().machine
LINUX32_MACHINE = {"x86_64": "i686", "aarch64": "armv8l"}


class _SchedAttr(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_uint32), ("policy", ctypes.c_uint32), ("flags", ctypes.c_uint64),
        ("nice", ctypes.c_int32), ("priority", ctypes.c_uint32),
        ("runtime", ctypes.c_uint64), ("deadline", ctypes.c_uint64), ("period", ctypes.c_uint64),
    ]


@pytest.fixture(autouse=True)
def _runc_lacks_them(xfail_runc: Callable[[str], None]) -> None:
    xfail_runc("runc 1.1.5 ignores personality, scheduler, ioPriority and memoryPolicy")


def sched_getattr(pid: int) -> _SchedAttr:
    """The kernel's scheduling attributes of pid (sched_getattr(2), from the host)."""
    attr = _SchedAttr()
    if _libc.syscall(_NR[MACHINE]["sched_getattr"], pid, ctypes.byref(attr), ctypes.sizeof(attr), 0) < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return attr


def ioprio_get(pid: int) -> tuple[int, int]:
    """(class, level) of pid's I/O priority (ioprio_get(IOPRIO_WHO_PROCESS), from the host)."""
    value = _libc.syscall(_NR[MACHINE]["ioprio_get"], 1, pid)
    if value < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return value >> 13, value & 0x7


def run_sh(runner: Runner, bundle: Bundle, script: str) -> str:
    bundle.sh(script)
    return runner.run(runner.new_id(), bundle).ok().stdout


def started(runner: Runner, bundle: Bundle, script: str = "sleep 1000") -> tuple[str, int]:
    """A running container (create + start); its id and the host pid of its process."""
    bundle.sh(script)
    cid = runner.new_id()
    runner.create(cid, bundle).ok()
    runner.start(cid).ok()
    return cid, int(runner.state(cid)["pid"])


def assert_refused(runtime: RuntimeInfo, runner: Runner, bundle: Bundle, *fragments: str) -> None:
    """create fails with one line naming fragments, and leaves no container or process behind."""
    bundle.write()
    cid = runner.new_id()
    r = runner.create(cid, bundle)
    assert_failed_cleanly(runtime, r, *fragments)
    assert runner.state_entries() == []
    assert runner.leftover_pids() == []


# ------------------------------------------------------------------------------------------------
# linux.personality
# ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(MACHINE not in LINUX32_MACHINE, reason="no 32-bit personality known for this machine")
def test_personality_linux32_in_init_and_exec(runner: Runner, bundle: Bundle) -> None:
    bundle.linux["personality"] = {"domain": "LINUX32"}
    cid, _ = started(runner, bundle)
    # exec'd processes live in the same container: they get its personality too (as with crun)
    assert runner.cmd("exec", cid, "uname", "-m").ok().stdout.strip() == LINUX32_MACHINE[MACHINE]
    runner.kill(cid, "KILL").ok()
    bundle.linux["personality"] = {"domain": "LINUX32", "flags": []}
    assert run_sh(runner, bundle, "uname -m").strip() == LINUX32_MACHINE[MACHINE]


def test_personality_linux_is_the_native_machine(runner: Runner, bundle: Bundle) -> None:
    bundle.linux["personality"] = {"domain": "LINUX"}
    assert run_sh(runner, bundle, "uname -m; cat /proc/self/personality").split() == [MACHINE, "00000000"]


@root_only
@pytest.mark.skipif(MACHINE not in LINUX32_MACHINE, reason="no 32-bit personality known for this machine")
@pytest.mark.skipif(shutil.which("crun") is None, reason="crun is not installed")
def test_personality_as_crun(runner: Runner, bundle: Bundle) -> None:
    """crun applies linux.personality: both runtimes show the same machine for both domains."""
    state = runner.workdir / "crun-state"
    bundle.config["ociVersion"] = "1.0.2"  # crun 1.8 refuses versions it does not know
    for domain in ("LINUX32", "LINUX"):
        bundle.linux["personality"] = {"domain": domain}
        bundle.sh("uname -m")
        cid = f"crun-{uuid.uuid4().hex[:10]}"
        # no cgroup (not what is compared), and, in a private mount namespace, no cgroup2 beside the
        # v1 hierarchies: crun 1.8 refuses a hybrid set-up ("cgroups in hybrid mode not supported")
        script = (THROWAWAY_DEV + 'umount /sys/fs/cgroup/unified 2>/dev/null; '
                  'exec crun --root "$1" --cgroup-manager=disabled run --bundle "$2" "$3"')
        crun = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(state),
                               str(bundle.path), cid], capture_output=True, text=True, timeout=60,
                              input="")
        subprocess.run(["crun", "--root", str(state), "delete", "--force", cid], capture_output=True, timeout=60)
        assert crun.returncode == 0, crun.stderr
        ours = runner.run(runner.new_id(), bundle).ok().stdout
        assert ours.strip() == crun.stdout.strip()


def test_personality_errors(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    bundle.linux["personality"] = {"domain": "LINUX64"}
    assert_refused(runtime, runner, bundle, "linux.personality.domain", "LINUX64")
    bundle.linux["personality"] = {}
    assert_refused(runtime, runner, bundle, "linux.personality.domain", "required")
    # runc warns and drops flags; no flag is defined by the spec, so none is accepted
    bundle.linux["personality"] = {"domain": "LINUX32", "flags": ["ADDR_NO_RANDOMIZE"]}
    assert_refused(runtime, runner, bundle, "linux.personality.flags[0]", "ADDR_NO_RANDOMIZE")


# ------------------------------------------------------------------------------------------------
# process.scheduler
# ------------------------------------------------------------------------------------------------


def _sched_fields(text: str) -> dict[str, str]:
    """/proc/PID/sched as {name: value}."""
    fields = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip()] = value.strip()
    return fields


def test_scheduler_batch_with_nice(runner: Runner, bundle: Bundle) -> None:
    bundle.process["scheduler"] = {"policy": "SCHED_BATCH", "nice": 7}
    out = run_sh(runner, bundle, "cut -d' ' -f19 /proc/self/stat; grep -E '^(policy|prio) ' /proc/self/sched")
    lines = out.splitlines()
    assert lines[0].strip() == "7"
    fields = _sched_fields("\n".join(lines[1:]))
    assert fields["policy"] == "3" and fields["prio"] == str(120 + 7)


def test_scheduler_idle_seen_from_the_host(runner: Runner, bundle: Bundle) -> None:
    bundle.process["scheduler"] = {"policy": "SCHED_IDLE"}
    cid, pid = started(runner, bundle)
    attr = sched_getattr(pid)
    assert attr.policy == 5
    runner.kill(cid, "KILL").ok()


def _allow_realtime(bundle: Bundle) -> None:
    """cgroup v1 with RT group scheduling gives a new cgroup no realtime budget: ask for one, in a
    cgroup right under the root (whose budget is the kernel's; an intermediate one has none)."""
    if os.path.exists("/sys/fs/cgroup/cpu/cpu.rt_runtime_us"):
        bundle.linux["cgroupsPath"] = f"/pyouki-test-rt-{uuid.uuid4().hex[:8]}"
        bundle.linux.setdefault("resources", {})["cpu"] = {"realtimeRuntime": 10000, "realtimePeriod": 1000000}


@root_only
@pytest.mark.parametrize("policy, number", [("SCHED_FIFO", 1), ("SCHED_RR", 2)])
def test_scheduler_realtime(runner: Runner, bundle: Bundle, policy: str, number: int) -> None:
    _allow_realtime(bundle)
    bundle.process["scheduler"] = {"policy": policy, "priority": 12, "flags": ["SCHED_FLAG_RESET_ON_FORK"]}
    cid, pid = started(runner, bundle)
    attr = sched_getattr(pid)
    assert (attr.policy, attr.priority) == (number, 12)
    assert attr.flags & 0x01  # SCHED_FLAG_RESET_ON_FORK
    # the container's own view: its init, and the exec'd sh (the container's scheduler: it has none of
    # its own) whose child grep starts back at SCHED_OTHER (reset on fork; "; true" makes sh fork it)
    script = "grep -E '^policy ' /proc/1/sched /proc/$$/sched -h; grep -E '^policy ' /proc/self/sched; true"
    out = runner.cmd("exec", cid, "sh", "-c", script).ok().stdout
    assert [_sched_fields(line)["policy"] for line in out.splitlines()] == [str(number), str(number), "0"]
    runner.kill(cid, "KILL").ok()


@root_only
def test_scheduler_deadline(runner: Runner, bundle: Bundle) -> None:
    bundle.process["scheduler"] = {"policy": "SCHED_DEADLINE", "runtime": 2_000_000, "deadline": 10_000_000,
                                   "period": 20_000_000, "flags": ["SCHED_FLAG_RESET_ON_FORK"]}
    # reset on fork: init can still fork its startContainer hooks (they start at SCHED_OTHER)
    bundle.config["hooks"] = {"startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "true"]}]}
    cid, pid = started(runner, bundle)
    attr = sched_getattr(pid)
    assert (attr.policy, attr.runtime, attr.deadline, attr.period) == (6, 2_000_000, 10_000_000, 20_000_000)
    fields = _sched_fields(Path(f"/proc/{pid}/sched").read_text())
    assert fields["policy"] == "6" and fields["prio"] == "-1" and fields["dl.runtime"] != ""
    runner.kill(cid, "KILL").ok()


def test_scheduler_deadline_and_start_hooks(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    """init runs startContainer hooks after taking on the scheduler: a deadline task cannot fork."""
    bundle.process["scheduler"] = {"policy": "SCHED_DEADLINE", "runtime": 2_000_000, "deadline": 10_000_000}
    bundle.config["hooks"] = {"startContainer": [{"path": "/bin/true"}]}
    assert_refused(runtime, runner, bundle, "process.scheduler.flags", "SCHED_FLAG_RESET_ON_FORK", "startContainer")


@rootless_only
def test_scheduler_rootless_cannot_go_realtime(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    """Realtime and a negative nice need CAP_SYS_NICE of the host: refused at create, one line."""
    bundle.process["scheduler"] = {"policy": "SCHED_FIFO", "priority": 10}
    assert_refused(runtime, runner, bundle, "process.scheduler", "SCHED_FIFO", "operation not permitted")
    bundle.process["scheduler"] = {"policy": "SCHED_OTHER", "nice": -5}
    assert_refused(runtime, runner, bundle, "process.scheduler", "nice -5", "operation not permitted")


@pytest.mark.parametrize("scheduler, fragments", [
    ({"policy": "SCHED_TURBO"}, ["process.scheduler.policy", "SCHED_TURBO"]),
    ({"nice": 3}, ["process.scheduler.policy", "required"]),
    ({"policy": "SCHED_OTHER", "nice": 20}, ["process.scheduler.nice", "out of range"]),
    ({"policy": "SCHED_FIFO"}, ["process.scheduler.priority", "1 to 99"]),
    ({"policy": "SCHED_RR", "priority": 100}, ["process.scheduler.priority", "1 to 99"]),
    ({"policy": "SCHED_BATCH", "priority": 5}, ["process.scheduler.priority"]),
    ({"policy": "SCHED_FIFO", "priority": 5, "nice": 3}, ["process.scheduler.nice", "SCHED_FIFO"]),
    ({"policy": "SCHED_OTHER", "runtime": 1000}, ["process.scheduler.runtime", "SCHED_DEADLINE"]),
    ({"policy": "SCHED_DEADLINE", "runtime": 100, "deadline": 1000}, ["process.scheduler.runtime", "1024"]),
    ({"policy": "SCHED_DEADLINE", "runtime": 5000, "deadline": 1000}, ["process.scheduler.deadline"]),
    ({"policy": "SCHED_DEADLINE", "runtime": 5000, "deadline": 9000, "period": 8000}, ["process.scheduler.period"]),
    ({"policy": "SCHED_OTHER", "flags": ["SCHED_FLAG_RECLAIM"]}, ["process.scheduler.flags[0]", "SCHED_DEADLINE"]),
    ({"policy": "SCHED_OTHER", "flags": ["SCHED_FLAG_FAST"]}, ["process.scheduler.flags[0]", "SCHED_FLAG_FAST"]),
])
def test_scheduler_errors(runtime: RuntimeInfo, runner: Runner, bundle: Bundle, scheduler: dict[str, Any],
                          fragments: list[str]) -> None:
    bundle.process["scheduler"] = scheduler
    assert_refused(runtime, runner, bundle, *fragments)


def test_scheduler_the_kernel_refuses(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    """What only the kernel can judge still fails create with one line (and a reason)."""
    bundle.process["scheduler"] = {"policy": "SCHED_ISO"}
    assert_refused(runtime, runner, bundle, "process.scheduler", "SCHED_ISO", "invalid argument")
    uclamp = any(line.startswith("CONFIG_UCLAMP_TASK=y") for line in _kernel_config())
    if not uclamp:
        bundle.process["scheduler"] = {"policy": "SCHED_OTHER", "flags": ["SCHED_FLAG_UTIL_CLAMP_MAX"]}
        assert_refused(runtime, runner, bundle, "process.scheduler", "SCHED_FLAG_UTIL_CLAMP_MAX", "CONFIG_UCLAMP_TASK")


def _kernel_config() -> list[str]:
    import gzip

    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            return f.read().splitlines()
    except OSError:
        pytest.skip("no /proc/config.gz to tell whether utilization clamping is built in")
        raise


# ------------------------------------------------------------------------------------------------
# process.ioPriority
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("klass, number, word",
                         [("IOPRIO_CLASS_BE", 2, "best-effort"), ("IOPRIO_CLASS_IDLE", 3, "idle")])
def test_io_priority(runner: Runner, bundle: Bundle, klass: str, number: int, word: str) -> None:
    bundle.process["ioPriority"] = {"class": klass, "priority": 6}
    cid, pid = started(runner, bundle)
    got_class, got_level = ioprio_get(pid)
    assert got_class == number and (number == 3 or got_level == 6)
    assert runner.cmd("exec", cid, "ionice", "-p", "1").ok().stdout.strip().startswith(word)
    runner.kill(cid, "KILL").ok()


@root_only
def test_io_priority_realtime(runner: Runner, bundle: Bundle) -> None:
    bundle.process["ioPriority"] = {"class": "IOPRIO_CLASS_RT", "priority": 1}
    out = run_sh(runner, bundle, "ionice")
    assert out.strip() == "realtime: prio 1"


@rootless_only
def test_io_priority_rootless_realtime_refused(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    bundle.process["ioPriority"] = {"class": "IOPRIO_CLASS_RT", "priority": 1}
    assert_refused(runtime, runner, bundle, "process.ioPriority", "IOPRIO_CLASS_RT", "operation not permitted")


def test_io_priority_errors(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    bundle.process["ioPriority"] = {"class": "IOPRIO_CLASS_NONE", "priority": 0}
    assert_refused(runtime, runner, bundle, "process.ioPriority.class", "IOPRIO_CLASS_NONE")
    bundle.process["ioPriority"] = {"class": "IOPRIO_CLASS_BE", "priority": 8}
    assert_refused(runtime, runner, bundle, "process.ioPriority.priority", "out of range")


# ------------------------------------------------------------------------------------------------
# exec: its own scheduler and ioPriority, or the container's
# ------------------------------------------------------------------------------------------------


def _process_file(runner: Runner, bundle: Bundle, args: list[str], **extra: Any) -> Path:
    process = json.loads(json.dumps(bundle.process))
    process.update(args=args, **extra)
    for key in [k for k, v in extra.items() if v is None]:
        del process[key]
    path = runner.workdir / f"process-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(process))
    if runner.owner:
        os.chown(path, *runner.owner)
    return path


def test_exec_with_its_own_scheduler_and_io_priority(runner: Runner, bundle: Bundle) -> None:
    bundle.process["scheduler"] = {"policy": "SCHED_BATCH", "nice": 3}
    bundle.process["ioPriority"] = {"class": "IOPRIO_CLASS_BE", "priority": 5}
    cid, _ = started(runner, bundle)
    script = "grep -E '^policy ' /proc/self/sched; cut -d' ' -f19 /proc/self/stat; ionice"
    # without its own: the container's (runc's rule), whether from flags or from a process file
    inherited = runner.cmd("exec", cid, "sh", "-c", script).ok().stdout.split("\n")
    assert _sched_fields(inherited[0])["policy"] == "3" and inherited[1:3] == ["3", "best-effort: prio 5"]
    path = _process_file(runner, bundle, ["sh", "-c", script], scheduler=None, ioPriority=None)
    assert runner.cmd("exec", "--process", str(path), cid).ok().stdout.split("\n") == inherited
    # with its own
    path = _process_file(runner, bundle, ["sh", "-c", script], scheduler={"policy": "SCHED_OTHER", "nice": 9},
                         ioPriority={"class": "IOPRIO_CLASS_IDLE", "priority": 0})
    own = runner.cmd("exec", "--process", str(path), cid).ok().stdout.split("\n")
    assert _sched_fields(own[0])["policy"] == "0" and own[1:3] == ["9", "idle"]
    # a wrong one fails the exec with one line, and the container runs on
    path = _process_file(runner, bundle, ["true"], scheduler={"policy": "SCHED_FIFO"})
    r = runner.cmd("exec", "--process", str(path), cid)
    assert r.returncode != 0 and "process.scheduler.priority" in r.stderr and len(r.stderr.splitlines()) == 1
    assert runner.status(cid) == "running"
    runner.kill(cid, "KILL").ok()


# ------------------------------------------------------------------------------------------------
# linux.memoryPolicy
# ------------------------------------------------------------------------------------------------


def _memory_nodes() -> list[int]:
    try:
        text = Path("/sys/devices/system/node/has_memory").read_text().strip()
    except OSError:
        pytest.skip("no NUMA support in this kernel")
    nodes: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        nodes.extend(range(int(lo), int(hi or lo) + 1))
    return nodes


MEMORY_POLICIES = [
    ({"mode": "MPOL_DEFAULT"}, "default"),
    ({"mode": "MPOL_LOCAL"}, "local"),
    ({"mode": "MPOL_PREFERRED", "nodes": "{n}"}, "prefer:{n}"),
    ({"mode": "MPOL_PREFERRED"}, "local"),  # no node: the kernel's local allocation
    ({"mode": "MPOL_BIND", "nodes": "{n}"}, "bind:{n}"),
    ({"mode": "MPOL_INTERLEAVE", "nodes": "{n}"}, "interleave:{n}"),
    ({"mode": "MPOL_WEIGHTED_INTERLEAVE", "nodes": "{n}"}, "weighted interleave:{n}"),
    ({"mode": "MPOL_PREFERRED_MANY", "nodes": "{n}"}, "prefer (many):{n}"),
    ({"mode": "MPOL_BIND", "nodes": "{n}", "flags": ["MPOL_F_STATIC_NODES"]}, "bind=static:{n}"),
    ({"mode": "MPOL_INTERLEAVE", "nodes": "0", "flags": ["MPOL_F_RELATIVE_NODES"]}, "interleave=relative:{n}"),
    ({"mode": "MPOL_BIND", "nodes": "{n}", "flags": ["MPOL_F_NUMA_BALANCING"]}, "bind=balancing:{n}"),
]


@root_only
@pytest.mark.parametrize("policy, shown", MEMORY_POLICIES, ids=[f"{p['mode']}-{s}" for p, s in MEMORY_POLICIES])
def test_memory_policy(runner: Runner, bundle: Bundle, policy: dict[str, Any], shown: str) -> None:
    node = _memory_nodes()[0]
    bundle.linux["memoryPolicy"] = json.loads(json.dumps(policy).replace("{n}", str(node)))
    out = run_sh(runner, bundle, "head -1 /proc/self/numa_maps")
    assert out.split(" ", 1)[1].startswith(shown.replace("{n}", str(node)) + " ")


def test_memory_policy_in_init_and_exec(runner: Runner, bundle: Bundle) -> None:
    """Rootless too (set_mempolicy needs no privilege); exec'd processes get the container's policy,
    and the host sees it on the container's process."""
    node = _memory_nodes()[0]
    bundle.linux["memoryPolicy"] = {"mode": "MPOL_INTERLEAVE", "nodes": str(node)}
    cid, pid = started(runner, bundle)
    if not runner.rootless:  # the test user may not read root's /proc/PID/numa_maps; root may
        assert f" interleave:{node} " in Path(f"/proc/{pid}/numa_maps").read_text().splitlines()[0]
    out = runner.cmd("exec", cid, "head", "-1", "/proc/self/numa_maps").ok().stdout
    assert out.split(" ")[1] == f"interleave:{node}"
    runner.kill(cid, "KILL").ok()


def test_memory_policy_errors(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    nodes = _memory_nodes()
    missing = max(nodes) + 1
    bundle.linux["memoryPolicy"] = {"mode": "MPOL_BIND", "nodes": f"{nodes[0]},{missing}"}
    assert_refused(runtime, runner, bundle, "linux.memoryPolicy.nodes", f"node {missing} does not exist")
    bundle.linux["memoryPolicy"] = {"mode": "MPOL_BIND"}
    assert_refused(runtime, runner, bundle, "linux.memoryPolicy.nodes", "at least one node")
    bundle.linux["memoryPolicy"] = {"mode": "MPOL_DEFAULT", "nodes": "0"}
    assert_refused(runtime, runner, bundle, "linux.memoryPolicy.nodes", "MPOL_DEFAULT takes no nodes")
    bundle.linux["memoryPolicy"] = {"mode": "MPOL_LOCAL", "flags": ["MPOL_F_STATIC_NODES"]}
    assert_refused(runtime, runner, bundle, "linux.memoryPolicy.flags", "MPOL_LOCAL takes no flags")
    bundle.linux["memoryPolicy"] = {"mode": "MPOL_BIND", "nodes": "0",
                                    "flags": ["MPOL_F_STATIC_NODES", "MPOL_F_RELATIVE_NODES"]}
    assert_refused(runtime, runner, bundle, "linux.memoryPolicy.flags", "exclude each other")
    bundle.linux["memoryPolicy"] = {"mode": "MPOL_INTERLEAVE", "nodes": "0", "flags": ["MPOL_F_NUMA_BALANCING"]}
    assert_refused(runtime, runner, bundle, "linux.memoryPolicy.flags", "MPOL_F_NUMA_BALANCING")
    bundle.linux["memoryPolicy"] = {"mode": "MPOL_FIRST_TOUCH", "nodes": "0"}
    assert_refused(runtime, runner, bundle, "linux.memoryPolicy.mode", "MPOL_FIRST_TOUCH")
    bundle.linux["memoryPolicy"] = {"mode": "MPOL_BIND", "nodes": "0-x"}
    assert_refused(runtime, runner, bundle, "linux.memoryPolicy.nodes", "0-x")
    bundle.linux["memoryPolicy"] = {"mode": "MPOL_BIND", "nodes": "0", "flags": ["MPOL_F_LAZY"]}
    assert_refused(runtime, runner, bundle, "linux.memoryPolicy.flags[0]", "MPOL_F_LAZY")


# ------------------------------------------------------------------------------------------------
# features
# ------------------------------------------------------------------------------------------------


@root_only
def test_features_lists_them(runner: Runner) -> None:
    doc = json.loads(runner.cmd("features", root=None).ok().stdout)
    assert doc["linux"]["memoryPolicy"] == {
        "modes": ["MPOL_DEFAULT", "MPOL_BIND", "MPOL_INTERLEAVE", "MPOL_WEIGHTED_INTERLEAVE", "MPOL_PREFERRED",
                  "MPOL_PREFERRED_MANY", "MPOL_LOCAL"],
        "flags": ["MPOL_F_NUMA_BALANCING", "MPOL_F_RELATIVE_NODES", "MPOL_F_STATIC_NODES"],
    }
    annotations = doc["annotations"]
    assert annotations["io.github.pyouki.linux.personality.domains"] == "LINUX,LINUX32"
    assert "SCHED_DEADLINE" in annotations["io.github.pyouki.process.scheduler.policies"].split(",")
    assert annotations["io.github.pyouki.process.ioPriority.classes"].split(",") == [
        "IOPRIO_CLASS_RT", "IOPRIO_CLASS_BE", "IOPRIO_CLASS_IDLE"]
