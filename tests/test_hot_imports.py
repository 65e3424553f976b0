"""The hot commands' import set: `state`, `start`, `kill` and `delete` run for every container an
engine handles, and each module they import costs interpreter time before the first syscall that
matters (issue 13: the target is the bare `python -I -S` start + 1 ms). This guards the set, so
a new top-level import (a driver, click, json, typing, a feature module) fails here instead of
silently slowing every container down.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Bundle, Runner, RuntimeInfo

# What the hot paths may import beyond the interpreter's own start-up modules. Adding a module
# here is a decision: it costs every engine call (measure it with `python -X importtime`, and in
# instructions with callgrind: the README's Performance section). Their common cases run in
# pyouki.cli.hot, on pyouki.record: no `os` (5 M instructions, a quarter of the interpreter's
# start), no error classes (~1 M) unless there is an error.
ALLOWED = frozenset({
    "fcntl",  # built in
    "pyouki", "pyouki.cli", "pyouki.cli.main", "pyouki.cli.hot", "pyouki.record", "pyouki.log",
    "pyouki.jsonout", "pyouki.signals",
})
# never on these paths, whatever ALLOWED says later (named so a failure says what went wrong)
FORBIDDEN = frozenset({"os", "__future__", "pyouki.errors", "pyouki.enginewords", "pyouki.state",
                       "pyouki.lifecycle", "pyouki.cgroups", "pyouki.cli.fastparse", "pyouki.cli.table",
                       "pyouki.cli.handlers"})
FORBIDDEN_PREFIXES = ("click", "json", "typing", "signal", "subprocess", "ctypes", "pyouki.cgroups.",
                      "pyouki.syscalls", "pyouki.config", "pyouki.create", "pyouki.init", "pyouki.become",
                      "pyouki.wasm", "pyouki.lsm", "pyouki.procattrs", "pyouki.netdev", "pyouki.idmapmount",
                      "pyouki.seccomp", "pyouki.notify", "pyouki.hooks", "pyouki.execstub", "pyroute2",
                      "wasmtime")


def _interpreter(runtime: RuntimeInfo) -> list[str]:
    """The launcher's `#!` line as an argv prefix (the venv's python -IS)."""
    first = Path(runtime.path).read_text().splitlines()[0]
    assert first.startswith("#!"), first
    return first[2:].split()


def _imports(runner: Runner, runtime: RuntimeInfo, *args: str) -> set[str]:
    """Modules a runtime command imports, from `-X importtime` (a cold interpreter)."""
    argv = [*_interpreter(runtime), "-X", "importtime", *runner.argv(args)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=runner.env(),
                       cwd=str(runner.workdir), **runner._spawn_kwargs())
    assert p.returncode == 0, p
    return {line.rsplit("|", 1)[-1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}


@pytest.fixture
def startup_modules(runtime: RuntimeInfo) -> set[str]:
    """What the bare interpreter imports by itself (`-I -S -c pass`)."""
    p = subprocess.run([*_interpreter(runtime), "-X", "importtime", "-c", "pass"], capture_output=True,
                       text=True, timeout=60)
    return {line.rsplit("|", 1)[-1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}


def test_hot_commands_import_only_the_allowed_modules(runtime: RuntimeInfo, runner: Runner, is_pyouki: bool,
                                                      make_bundle: Callable[..., Bundle],
                                                      startup_modules: set[str]) -> None:
    if not is_pyouki:
        pytest.skip("pyouki's own import set")
    cid = runner.new_id()
    runner.create(cid, make_bundle(args=("sleep", "1000"))).ok()
    seen: dict[str, set[str]] = {}
    seen["state (created)"] = _imports(runner, runtime, "state", cid)
    seen["start"] = _imports(runner, runtime, "start", cid)
    seen["state (running)"] = _imports(runner, runtime, "state", cid)
    seen["kill"] = _imports(runner, runtime, "kill", cid, "KILL")
    assert runner.wait_status(cid, "stopped") == "stopped"
    seen["delete"] = _imports(runner, runtime, "delete", cid)
    for verb, modules in seen.items():
        # the check sees the imports at all (a broken parse would pass everything)
        assert "pyouki.cli.hot" in modules, (verb, sorted(modules))
        extra = modules - startup_modules - ALLOWED
        assert not extra, f"{verb} imports {sorted(extra)}: keep them lazy (see ALLOWED above)"
        bad = sorted(m for m in modules if m in FORBIDDEN or m.startswith(FORBIDDEN_PREFIXES))
        assert not bad, f"{verb} imports {bad}"
