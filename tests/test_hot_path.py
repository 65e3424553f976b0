"""The fast path of state/start/kill/delete (pyouki.cli.hot) against the full CLI.

Two containers of one bundle go through the same life, one driven through the fast path and one
with PYOUKI_HOT=0 (the full path: fastparse, handlers, lifecycle); every command's exit status,
stdout, stderr and --log file (text and JSON) must be the same once the ids, pids and times are
masked. Each step also says whether the fast path must have handled it itself (it imported no
pyouki.cli.fastparse) or must have left it to the full path, so a fast path that declined
everything could not pass by comparing the full path with itself.
"""

from __future__ import annotations

import marshal
import re
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Bundle, Runner, RuntimeInfo

from pyouki.record import frozen_plain

FULL_ONLY = "pyouki.cli.fastparse"  # imported only when the full path parses the command
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z")


def _interpreter(runtime: RuntimeInfo) -> list[str]:
    """The launcher's `#!` line as an argv prefix (the venv's python -IS)."""
    first = Path(runtime.path).read_text().splitlines()[0]
    assert first.startswith("#!"), first
    return first[2:].split()


class Pair:
    """Two containers driven through the two paths; run() compares what each command gives."""

    def __init__(self, runner: Runner, runtime: RuntimeInfo) -> None:
        self.runner = runner
        self.runtime = runtime
        token = uuid.uuid4().hex[:10]
        self.ids = {"hot": f"h-{token}", "full": f"f-{token}"}
        runner.ids.extend(self.ids.values())
        self.step = 0

    def _call(self, path: str, args: list[str]) -> tuple[int, str, str, set[str]]:
        env = self.runner.env()
        if path == "full":
            env["PYOUKI_HOT"] = "0"
        argv = [*_interpreter(self.runtime), "-X", "importtime", *self.runner.argv(args)]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd=str(self.runner.workdir),
                           **self.runner._spawn_kwargs())
        modules = {line.rsplit("|", 1)[-1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}
        stderr = "".join(line + "\n" for line in p.stderr.splitlines() if not line.startswith("import time:"))
        return p.returncode, p.stdout, stderr, modules

    def _mask(self, text: str, path: str, pid: str | None) -> str:
        text = text.replace(self.ids[path], "ID")
        text = TIME.sub("TIME", text)
        if pid:
            text = re.sub(rf"\b{pid}\b", "PID", text)
        return text

    def run(self, *args: str, handled: bool, log_format: str | None = None, status: int | None = None) -> str:
        """Run args ("{id}" for the container's id) through both paths, assert they agree and
        that the fast path handled it (or left it to the full path) as `handled` says; return
        the fast path's masked stdout."""
        self.step += 1
        seen = {}
        for path in ("hot", "full"):
            log = None
            argv = [a.replace("{id}", self.ids[path]) for a in args]
            if log_format:
                log = self.runner.rundir / f"log-{path}-{self.step}"
                argv = ["--log", str(log), "--log-format", log_format, "--log-level", "debug", *argv]
            pid = self._pid(path)
            rc, out, err, modules = self._call(path, argv)
            text = log.read_text() if log and log.exists() else ""
            seen[path] = (rc, self._mask(out, path, pid), self._mask(err, path, pid), self._mask(text, path, pid))
            if path == "hot":
                assert (FULL_ONLY not in modules) == handled, (args, "handled by the fast path" if handled
                                                               else "left to the full path", sorted(modules))
            else:
                assert FULL_ONLY in modules, (args, "PYOUKI_HOT=0 must force the full path")
        assert seen["hot"] == seen["full"], (args, seen)
        if status is not None:
            assert seen["hot"][0] == status, (args, seen["hot"])
        return seen["hot"][1]

    def _pid(self, path: str) -> str | None:
        p = self.runner.cmd("state", self.ids[path])
        match = re.search(r'"pid": (\d+)', p.stdout) if p.returncode == 0 else None
        return match.group(1) if match and match.group(1) != "0" else None


@pytest.fixture
def pair(runner: Runner, runtime: RuntimeInfo, is_pyouki: bool) -> Pair:
    if not is_pyouki:
        pytest.skip("pyouki's own fast path")
    return Pair(runner, runtime)


def test_hot_path_gives_what_the_full_path_gives(pair: Pair, runner: Runner,
                                                 make_bundle: Callable[..., Bundle]) -> None:
    bundle = make_bundle(args=("sleep", "1000"))
    for cid in pair.ids.values():
        runner.create(cid, bundle).ok()
    assert '"status": "created"' in pair.run("state", "{id}", handled=True, status=0)
    pair.run("start", "{id}", handled=True, log_format="json", status=0)
    pair.run("start", "{id}", handled=False, log_format="text", status=1)  # running: refused
    assert '"status": "running"' in pair.run("state", "{id}", handled=True, status=0)
    pair.run("kill", "{id}", "0", handled=True, log_format="json", status=0)
    pair.run("kill", "{id}", "NOPE", handled=True, log_format="json", status=1)
    pair.run("kill", "{id}", "99", handled=True, status=1)
    pair.run("delete", "{id}", handled=False, log_format="json", status=1)  # running: refused
    if all(runner.cmd("pause", cid).returncode == 0 for cid in pair.ids.values()):  # needs a cgroup
        assert '"status": "paused"' in pair.run("state", "{id}", handled=True, status=0)
        pair.run("kill", "{id}", "0", handled=True, status=0)
        pair.run("kill", "{id}", "KILL", handled=False, status=0)  # the thaw after a paused KILL
    else:
        pair.run("--log-level", "info", "kill", "{id}", "KILL", handled=True, status=0)
    for cid in pair.ids.values():
        assert runner.wait_status(cid, "stopped") == "stopped"
    assert '"status": "stopped"' in pair.run("state", "{id}", handled=True, status=0)
    pair.run("kill", "{id}", handled=False, log_format="json", status=1)  # stopped: runc's "not running"
    pair.run("start", "{id}", handled=False, status=1)
    pair.run("delete", "{id}", handled=True, log_format="json", status=0)
    pair.run("delete", "{id}", handled=True, log_format="text", status=1)
    assert pair.run("delete", "--force", "{id}", handled=True, log_format="json", status=0) == ""
    for verb in ("state", "start", "kill"):
        pair.run(verb, "{id}", handled=True, log_format="json", status=1)
    for cid in pair.ids.values():
        assert not (runner.state_root / cid).exists()


def test_hot_path_refuses_what_the_full_path_refuses(pair: Pair) -> None:
    # ids that could name a path outside the state dir, for every verb
    for verb in ("state", "start", "kill", "delete"):
        for bad in ("..", "../x", "a/../../etc", ".hidden", "x" * 1025):
            pair.run(verb, bad, handled=True, log_format="json", status=1)
    pair.run("delete", "-f", "../x", handled=True, status=1)
    # an unusable --log fails the command up front, on either path
    pair.run("--log", "/", "state", "{id}", handled=True, status=1)
    # what the fast path does not read goes to the full parser (and its usage errors)
    pair.run("state", handled=False)
    pair.run("kill", "--all=maybe", "{id}", handled=False)
    pair.run("--root", "relative", "state", "{id}", handled=False, status=1)
    pair.run("--debug", "state", "{id}", handled=False, status=1)


def _as_systemd_record(runner: Runner, cid: str) -> dict:
    """Rewrite the container's record as the systemd driver keeps it: the unit, and the cgroupfs
    driver's state of the unit's cgroup under "fs" (SystemdCgroup.to_state). This host has no
    systemd: the cgroup is the one create made, which is all state/start/kill/pause read (the
    nspawn tier runs the real driver). Returns the record's cgroupfs state, to put it back."""
    path = runner.state_root / cid / "state.bin"
    record = marshal.loads(path.read_bytes())
    fs = record["cgroup"]
    record["cgroup"] = {"driver": "systemd", "unit": f"pyouki-{cid}.scope", "slice": "system.slice",
                        "user": False, "rootless": False, "fs": fs}
    path.write_bytes(marshal.dumps(record))  # in place: the owner stays the container's
    return fs


def test_hot_path_reads_a_systemd_record_as_the_full_path_does(pair: Pair, runner: Runner,
                                                               make_bundle: Callable[..., Bundle]) -> None:
    """Podman on a systemd host records every container under the systemd driver: state, start and
    kill read the unit's cgroup through the cgroupfs state the record keeps (no D-Bus), on the
    fast path, with the full path's output."""
    bundle = make_bundle(args=("sleep", "1000"))
    for cid in pair.ids.values():
        runner.create(cid, bundle).ok()
    records = [marshal.loads((runner.state_root / cid / "state.bin").read_bytes()) for cid in pair.ids.values()]
    if not all(record.get("cgroup") for record in records):
        pytest.skip("the container has no cgroup here (rootless without a delegated one)")
    fs = {path: _as_systemd_record(runner, cid) for path, cid in pair.ids.items()}
    assert '"status": "created"' in pair.run("state", "{id}", handled=True, log_format="json", status=0)
    pair.run("start", "{id}", handled=True, log_format="json", status=0)
    assert '"status": "running"' in pair.run("state", "{id}", handled=True, status=0)
    pair.run("kill", "{id}", "0", handled=True, log_format="json", status=0)
    pair.run("kill", "--all", "{id}", "0", handled=False, status=0)  # through the driver's cgroup
    if all(runner.cmd("pause", cid).returncode == 0 for cid in pair.ids.values()):  # the v1 freezer or cgroup.freeze
        assert '"status": "paused"' in pair.run("state", "{id}", handled=True, status=0)
        pair.run("kill", "{id}", "0", handled=True, status=0)
        for cid in pair.ids.values():
            runner.cmd("resume", cid).ok()
    pair.run("kill", "{id}", "KILL", handled=True, log_format="json", status=0)
    for cid in pair.ids.values():
        assert runner.wait_status(cid, "stopped") == "stopped"
    assert '"status": "stopped"' in pair.run("state", "{id}", handled=True, status=0)
    # delete asks systemd for the unit (the nspawn tier): put the plain record back to delete here
    for path, cid in pair.ids.items():
        record_path = runner.state_root / cid / "state.bin"
        record = marshal.loads(record_path.read_bytes())
        record["cgroup"] = fs[path]
        record_path.write_bytes(marshal.dumps(record))
        runner.cmd("delete", cid).ok()


@pytest.mark.parametrize(("fs", "frozen"), [
    ({"driver": "cgroupfs-v2", "path": "CG", "mountpoint": "/sys/fs/cgroup"}, True),
    ({"driver": "cgroupfs-v1", "paths": {"freezer": "CG", "memory": "/nonexistent"}, "unified": None}, True),
    ({"driver": "cgroupfs-v1", "paths": {"memory": "/nonexistent"}, "unified": None}, False),
])
def test_frozen_of_a_systemd_record_is_read_from_its_cgroup(tmp_path: Path, fs: dict, frozen: bool) -> None:
    """The status decision for a systemd record: the unit's cgroup's own file, frozen or thawed;
    a record without the cgroupfs state (never written for a live container) is the driver's."""
    cg = tmp_path / "unit.scope"
    cg.mkdir()
    fs = {k: v.replace("CG", str(cg)) if isinstance(v, str) else v for k, v in fs.items()}
    if "paths" in fs:
        fs["paths"] = {k: v.replace("CG", str(cg)) for k, v in fs["paths"].items()}
    record = {"driver": "systemd", "unit": "pyouki-c1.scope", "slice": "system.slice", "user": False,
              "rootless": False, "fs": fs}
    (cg / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    (cg / "freezer.state").write_text("FROZEN\n")
    assert frozen_plain(record) is frozen
    (cg / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    (cg / "freezer.state").write_text("THAWED\n")
    assert frozen_plain(record) is False
    assert frozen_plain(dict(record, fs=None)) is None
