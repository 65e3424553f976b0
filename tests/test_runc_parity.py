"""Small things runc does that programs in containers rely on."""

from __future__ import annotations

from harness import Bundle, Runner


def test_home_comes_from_the_containers_passwd(runner: Runner, bundle: Bundle) -> None:
    bundle.config["process"]["env"] = [e for e in bundle.config["process"]["env"] if not e.startswith("HOME=")]
    bundle.sh('echo "$HOME"')
    assert runner.run(runner.new_id(), bundle).ok().stdout.strip() == "/root"


def test_explicit_home_is_kept(runner: Runner, bundle: Bundle) -> None:
    bundle.config["process"]["env"].append("HOME=/elsewhere")
    bundle.sh('echo "$HOME"')
    assert runner.run(runner.new_id(), bundle).ok().stdout.strip() == "/elsewhere"


def test_missing_cwd_is_created(runner: Runner, bundle: Bundle) -> None:
    bundle.config["process"]["cwd"] = "/made/by/the/runtime"
    bundle.sh("pwd")
    assert runner.run(runner.new_id(), bundle).ok().stdout.strip() == "/made/by/the/runtime"
