"""Rootless podman with the systemd cgroup manager, runc and pyouki side by side (nspawn tier).

``cgroup_manager = "systemd"`` is podman's default on every systemd machine: podman asks the
user manager (over the user bus of a PAM login) for a ``libpod-ID.scope`` and passes
``--systemd-cgroup`` and ``user.slice:libpod:ID`` to the runtime. The e2e podman tests force
cgroupfs because this host's PID 1 is not systemd; here a real systemd 252 runs in
systemd-nspawn (tests/systemd/README.md) and tests/systemd/check_podman_systemd.py drives podman
as the logged-in test user with each runtime.

The cached rootfs has no podman: the host's podman 4.3.1, conmon, catatonit and runc (same
Debian bookworm) are bound in read-only with the few shared libraries the rootfs lacks, so
the rootfs and its cache key (shared with the qemu tier) stay as they are. runc needs the
keyring syscalls nspawn filters by default (``@keyring``: "unable to join session keyring").

What the nspawn tree cannot give: the host keeps every controller on cgroup v1, so the
container's cgroup v2 tree has none (no pids.max, cpu.max, memory.*). A limit then fails with
both runtimes (runc writing the missing file, pyouki before a unit property systemd would not
enforce), so the set-up has ``pids_limit = 0`` (podman's default limit) and the limits are
separate scenarios; the freezer (cgroup.freeze) is core v2 and works. Limits are enforced only
in the qemu tier (tests/vm/).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_systemd_driver import REPO, _ensure_tools, nspawn

# host binary -> where the rootfs gets it (podman finds catatonit in /usr/libexec/podman)
HOST_BINARIES = {
    "/usr/bin/podman": "/usr/bin/podman",
    "/usr/bin/conmon": "/usr/bin/conmon",
    "/usr/bin/catatonit": "/usr/libexec/podman/catatonit",
    "/usr/sbin/runc": "/usr/sbin/runc",
}
RUNTIMES = ["runc", "pyouki"]
# scenarios whose answers are ids, times or paths that differ per container
VARYING = {"run_d", "exec_d", "init_cgroup", "scope_expected", "scopes_running", "ps", "top", "stats"}
# podman's exit status for a runtime failing create: 127 when the runtime's error says "no such
# file or directory" (runc's missing pids.max: podman takes it for a missing command), else 126
CREATE_FAILS = (126, 127)


def _missing_libraries(tree: Path) -> list[str]:
    """Shared libraries of HOST_BINARIES the rootfs tree does not have (resolved host paths)."""
    out: list[str] = []
    for binary in HOST_BINARIES:
        res = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=30)
        for line in res.stdout.splitlines():
            parts = line.split()
            if "=>" in parts and len(parts) > parts.index("=>") + 1:
                lib = parts[parts.index("=>") + 1]
                if lib.startswith("/") and not os.path.lexists(str(tree) + lib) and lib not in out:
                    out.append(lib)
    return out


@pytest.fixture(scope="module")
def machine() -> Iterator[Any]:
    """The nspawn container with the host's podman, conmon, catatonit, runc and busybox bound in."""
    _ensure_tools()
    missing = [b for b in HOST_BINARIES if not os.path.exists(b)]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (tests/e2e/APT_PACKAGES, runc)")
    tree = nspawn.prepare_tree(nspawn.build_rootfs())
    binds = [("/bin/busybox", "/opt/busybox"), *HOST_BINARIES.items()]
    binds += [(os.path.realpath(lib), lib) for lib in _missing_libraries(tree)]
    with nspawn.booted(REPO, binds=binds, syscalls=["@keyring"]) as m:
        yield m


@pytest.fixture(scope="module")
def facts(machine: Any) -> dict[str, Any]:
    """What check_podman_systemd.py observed per runtime, as the logged-in user, run once."""
    env = {"PYTHONDONTWRITEBYTECODE": "1"}
    script = "tests/systemd/check_podman_systemd.py"
    machine.run(["python3", script, "setup"], env=env).check()
    res = machine.run(["python3", script, "run"], user=True, env=env, timeout=900).check()
    return json.loads(res.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _ok(answer: dict[str, Any]) -> str:
    assert answer["rc"] == 0, answer
    return str(answer["stdout"])


def test_podman_systemd_is_the_manager_on_cgroup_v2(facts: dict[str, Any]) -> None:
    assert _ok(facts["info"]) == "systemd v2"


@pytest.mark.parametrize("rt", RUNTIMES)
def test_podman_systemd_run_lands_in_a_libpod_scope(facts: dict[str, Any], rt: str) -> None:
    f = facts[rt]
    assert _ok(f["run_fg"]) == "hello"
    assert f["run_exit_code"] == 7
    cid = _ok(f["run_d"])
    assert f["cgroup_manager"] == "systemd"
    # the container's init is in the scope the runtime asked the user manager for
    assert f["init_cgroup"] == f["scope_expected"]
    assert f["scope_expected"].endswith(f"/user@1000.service/user.slice/libpod-{cid}.scope")
    assert f"libpod-{cid}.scope" in f["scopes_running"]


@pytest.mark.parametrize("rt", RUNTIMES)
def test_podman_systemd_exec_plain_and_detached(facts: dict[str, Any], rt: str) -> None:
    """exec joins the existing scope (no second StartTransientUnit)."""
    f = facts[rt]
    assert _ok(f["exec"]) == "in-42"
    assert f["exec_missing"] == 127
    assert _ok(f["exec_d"])
    assert "sleep 300" in _ok(f["top"])  # the detached exec runs in the container
    assert _ok(f["exec_after_unpause"]) == "again"


@pytest.mark.parametrize("rt", RUNTIMES)
def test_podman_systemd_top_ps_stats(facts: dict[str, Any], rt: str) -> None:
    f = facts[rt]
    top = _ok(f["top"]).splitlines()
    assert top[0].split() == ["PID", "COMMAND"]
    assert any(line.split()[:2] == ["1", "sh"] for line in top[1:]), top
    assert _ok(f["ps"]).startswith(f"pms-{rt} Up ")
    # no pids controller in nspawn's tree: podman reads 0 (and warns) whatever the runtime
    assert _ok(f["stats"]) == f"pms-{rt} 0"


@pytest.mark.parametrize("rt", RUNTIMES)
def test_podman_systemd_pause_unpause(facts: dict[str, Any], rt: str) -> None:
    f = facts[rt]
    _ok(f["pause"])
    assert f["paused"] == "paused"
    assert f["frozen"] == "1"  # the scope's cgroup.freeze
    _ok(f["unpause"])
    assert f["unpaused"] == "running"


@pytest.mark.parametrize("rt", RUNTIMES)
def test_podman_systemd_kill_of_a_paused_container(facts: dict[str, Any], rt: str) -> None:
    """SIGKILL thaws; systemd then removes the emptied scope, which the thaw must not wait for."""
    f = facts[rt]
    _ok(f["pause_again"])
    _ok(f["kill_paused"])
    assert f["after_kill"] == "exited"


@pytest.mark.parametrize("rt", RUNTIMES)
def test_podman_systemd_rm_leaves_nothing(facts: dict[str, Any], rt: str) -> None:
    f = facts[rt]
    _ok(f["rm"])
    assert f["after_rm"] != 0
    assert f["scopes_left"] == []
    assert f["cgroup_left"] is False
    assert f["init_alive"] is False


@pytest.mark.parametrize(("key", "field", "file"), [("run_pids_limit", "pids.limit", "pids.max"),
                                                   ("update", "cpu.quota", "cpu.max")])
def test_podman_systemd_limits_without_controllers_fail_as_with_runc(
        facts: dict[str, Any], key: str, field: str, file: str) -> None:
    """No pids or cpu controller here: runc fails writing the cgroup file; pyouki fails too,
    naming the field, where it used to set a unit property systemd took and never enforced."""
    runc, pyouki = facts["runc"][key], facts["pyouki"][key]
    assert runc["rc"] != 0 and f"{file}: no such file or directory" in runc["stderr"], runc
    if key.startswith("run_"):
        assert runc["rc"] in CREATE_FAILS and pyouki["rc"] == 126, pyouki
    else:
        assert pyouki["rc"] == runc["rc"], pyouki
    controller = field.split(".")[0]
    assert f"linux.resources.{field}: the {controller} controller is not available to the systemd user manager (" \
        in pyouki["stderr"], pyouki
    assert "/cgroup.controllers: none): the limit cannot be enforced" in pyouki["stderr"], pyouki


def test_podman_systemd_refused_update_leaves_the_unit_as_it_was(facts: dict[str, Any]) -> None:
    """pyouki refuses before SetUnitProperties (runc sets the property, then fails on the file)."""
    assert facts["pyouki"]["cpu_quota"] == "infinity"


def test_podman_systemd_pyouki_answers_as_runc(facts: dict[str, Any]) -> None:
    """Every scenario: the same exit status and output with both runtimes (ids aside)."""
    runc, pyouki = facts["runc"], facts["pyouki"]
    assert runc.keys() == pyouki.keys()
    for key in runc.keys() - VARYING - {"cpu_quota"}:
        a, b = runc[key], pyouki[key]
        if key == "run_pids_limit" and a["rc"] in CREATE_FAILS:
            a = dict(a, rc=126)  # see CREATE_FAILS
        if isinstance(a, dict):
            a, b = (a["rc"], a["stdout"].replace("runc", "RT")), (b["rc"], b["stdout"].replace("pyouki", "RT"))
        assert a == b, key

