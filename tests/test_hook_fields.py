"""Each hook's path, args, env and timeout, in each of the six phases (config.md "POSIX-platform Hooks")."""

from __future__ import annotations

import os

from harness import Bundle, Runner

HOST_PHASES = ("prestart", "createRuntime", "createContainer", "poststart", "poststop")


def test_env_and_timeout_in_every_phase(runner: Runner, bundle: Bundle) -> None:
    log = bundle.path / "hooks.log"
    hooks: dict[str, list[dict]] = {}
    for phase in HOST_PHASES:
        # the host's sh, its path resolved in the runtime's mount namespace (createContainer: before pivot)
        hooks[phase] = [{"path": "/bin/sh", "args": ["sh", "-c", f'echo "$PHASE:$#:$1" >> {log}', "sh", "arg1"],
                         "env": [f"PHASE={phase}"], "timeout": 30}]
    # startContainer runs in the container: the container's sh, writing into the container
    hooks["startContainer"] = [{"path": "/bin/sh", "args": ["sh", "-c", 'echo "$PHASE:$#:$1" > /start.log', "sh", "a1"],
                                "env": ["PHASE=startContainer"], "timeout": 30}]
    bundle.config["hooks"] = hooks
    bundle.sh("cat /start.log")
    if runner.owner:
        log.touch()
        os.chown(log, *runner.owner)
    r = runner.run(runner.new_id(), bundle)
    assert r.ok().stdout == "startContainer:1:a1\n"
    lines = log.read_text().splitlines()
    assert sorted(lines) == sorted(f"{phase}:1:arg1" for phase in HOST_PHASES), lines
