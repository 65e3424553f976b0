"""`exec --cgroup`: the process joins an existing sub-cgroup of the container's (runc 1.1's flag).

Observed from inside: the exec'd process prints its own /proc/self/cgroup. The sub-cgroups are
made by the test under the container's cgroup, which `delete` removes with them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from harness import Bundle, Runner, RuntimeInfo

from pyouki.cgroups.sub import parse, resolve
from pyouki.errors import PyoukiError

# --- the flag's forms (pure logic) ---------------------------------------------------------------


@pytest.mark.parametrize("args, want", [
    (["sub"], {"": "sub"}),
    (["/a/b/"], {"": "a/b"}),
    ([":sub"], {"": "sub"}),
    ([""], {"": ""}),
    (["memory:sub"], {"memory": "sub"}),
    (["memory,pids:x", "cpu:y"], {"memory": "x", "pids": "x", "cpu": "y"}),
    (["name=systemd:s"], {"name=systemd": "s"}),
    (["memory:a/../b"], {"memory": "b"}),
])
def test_parse_accepts_runc_forms(args: list[str], want: dict[str, str]) -> None:
    assert parse(args) == want


@pytest.mark.parametrize("args, message", [
    (["a:b:c"], "invalid --cgroup argument: a:b:c"),
    (["sub", "sub2"], "invalid --cgroup argument: sub (missing <controller>: prefix)"),
    (["sub", "memory:sub"], "invalid --cgroup argument: sub (missing <controller>: prefix)"),
    (["memory:../.."], "invalid --cgroup argument: ../.. is not a sub cgroup path"),
    (["/../x"], "invalid --cgroup argument: /../x is not a sub cgroup path"),
])
def test_parse_refuses_like_runc(args: list[str], message: str) -> None:
    with pytest.raises(PyoukiError) as e:
        parse(args)
    assert str(e.value) == message


def test_resolve_per_controller_and_for_all() -> None:
    v1 = {"cpu": "/cg/cpu/c", "cpuacct": "/cg/cpu/c", "memory": "/cg/memory/c", "": "/cg/unified/c"}
    assert resolve(v1, {"memory": "s"}) == ["/cg/cpu/c", "/cg/memory/c/s", "/cg/unified/c"]
    assert resolve(v1, {"": "s"}) == ["/cg/cpu/c/s", "/cg/memory/c/s", "/cg/unified/c/s"]
    assert resolve({"": "/cg/c"}, {"": "s/t"}) == ["/cg/c/s/t"]
    with pytest.raises(PyoukiError, match="^invalid --cgroup argument: unknown controller memory$"):
        resolve({"": "/cg/c"}, {"memory": "s"})  # cgroup v2 has no per-controller paths


# --- real containers -------------------------------------------------------------------------


def _cgroups(pid: int) -> dict[str, str]:
    """pid's cgroup per hierarchy ("" the unified one), from /proc/PID/cgroup."""
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        out[ctrls] = path
    return out


def _dirs(pid: int) -> dict[str, Path]:
    """The container's cgroup directory per hierarchy on this host (v1, hybrid or v2)."""
    out = {}
    for ctrls, path in _cgroups(pid).items():
        if ctrls == "":
            mnt = "/sys/fs/cgroup/unified" if os.path.isdir("/sys/fs/cgroup/unified") else "/sys/fs/cgroup"
        else:
            mnt = "/sys/fs/cgroup/" + ctrls.removeprefix("name=")
        if os.path.isdir(mnt):
            out[ctrls] = Path(mnt + path)
    return out


def _running(runner: Runner, bundle: Bundle) -> tuple[str, int]:
    bundle.sh("sleep 1000")
    cid = runner.new_id()
    runner.create(cid, bundle).ok()
    runner.start(cid).ok()
    return cid, int(runner.state(cid)["pid"])


def _mksub(d: Path) -> None:
    (d / "sub").mkdir()
    if (d / "cpuset.cpus").exists():  # a v1 cpuset cgroup takes no task until it has cpus and mems
        for f in ("cpuset.cpus", "cpuset.mems"):
            (d / "sub" / f).write_text((d / f).read_text())


def _inside(runner: Runner, cid: str, *flags: str) -> dict[str, str]:
    r = runner.cmd("exec", *flags, cid, "cat", "/proc/self/cgroup").ok()
    return {line.split(":", 2)[1]: line.split(":", 2)[2] for line in r.stdout.splitlines()}


@pytest.mark.parametrize("mode", ["root"])
def test_exec_joins_sub_cgroups(runner: Runner, bundle: Bundle) -> None:
    cid, pid = _running(runner, bundle)
    base = _cgroups(pid)
    dirs = _dirs(pid)
    if "" in base and len(base) == 1:  # cgroup v2: one hierarchy, the bare form only
        _mksub(dirs[""])
        assert _inside(runner, cid, "--cgroup", "sub")[""] == base[""] + "/sub"
        runner.delete(cid, "--force").ok()
        return
    _mksub(dirs["memory"])
    _mksub(dirs["pids"])
    got = _inside(runner, cid, "--cgroup", "memory,pids:sub")
    assert got["memory"] == base["memory"] + "/sub" and got["pids"] == base["pids"] + "/sub", got
    assert all(got[k] == base[k] for k in base if k not in ("memory", "pids")), got
    got = _inside(runner, cid, "--cgroup", "memory:sub", "--cgroup", "pids:sub")  # repeatable
    assert got["memory"] == base["memory"] + "/sub" and got["pids"] == base["pids"] + "/sub", got
    for ctrls, d in dirs.items():
        if ctrls not in ("memory", "pids"):
            _mksub(d)
    got = _inside(runner, cid, "--cgroup", "sub")  # every hierarchy, the unified one too
    assert got == {k: v + "/sub" for k, v in base.items() if k in dirs} | {k: v for k, v in base.items()
                                                                          if k not in dirs}, got
    # the container's own processes stayed where they were
    assert _cgroups(pid) == base
    runner.delete(cid, "--force").ok()
    assert not any(d.exists() for d in dirs.values())  # sub-cgroups and all


@pytest.mark.parametrize("mode", ["root"])
def test_exec_into_a_missing_sub_cgroup_fails(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    cid, pid = _running(runner, bundle)
    r = runner.cmd("exec", "--cgroup", "memory:nosuch" if "memory" in _cgroups(pid) else "nosuch", cid,
                   "sh", "-c", "echo ran")
    assert r.returncode != 0 and "ran" not in r.stdout, r
    if runtime.is_pyouki:
        assert r.stderr.startswith("pyouki: exec failed: failed to add pid ") and r.stderr.rstrip().endswith(
            "/nosuch: no such file or directory"), r
    # nothing runs on in the container's cgroup: only init is left
    assert runner.cmd("ps", cid).ok().stdout.count("\n") == 2  # a header and init
    runner.delete(cid, "--force").ok()


@pytest.mark.parametrize("mode", ["root"])
def test_exec_cgroup_refusals(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    cid, _ = _running(runner, bundle)
    for flags, message in (
        (["--cgroup", "bogus:sub"], "invalid --cgroup argument: unknown controller bogus"),
        (["--cgroup", "a:b:c"], "invalid --cgroup argument: a:b:c"),
        (["--cgroup", "x", "--cgroup", "y"], "invalid --cgroup argument: x (missing <controller>: prefix)"),
        (["--cgroup", "memory:../.."], "invalid --cgroup argument: ../.. is not a sub cgroup path"),
    ):
        r = runner.cmd("exec", *flags, cid, "true")
        assert r.returncode != 0, r
        if runtime.is_pyouki:
            assert r.stderr == f"pyouki: exec failed: {message}\n", r
    runner.delete(cid, "--force").ok()


@pytest.mark.parametrize("mode", ["rootless"])
def test_rootless_without_a_cgroup_says_so(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    cid, _ = _running(runner, bundle)
    own = _cgroups(int(runner.state(cid)["pid"]))
    r = runner.cmd("exec", "--cgroup", "sub", cid, "true")
    assert r.returncode != 0, r  # never a silent run outside the asked-for cgroup
    if runtime.is_pyouki and all(not p.startswith("/pyouki") for p in own.values()):
        assert r.stderr.startswith("pyouki: exec failed: --cgroup: the container has no cgroup"), r
    runner.delete(cid, "--force").ok()
