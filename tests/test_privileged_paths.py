"""Paths runc reaches with the runtime's privileges, before the container's user takes over."""

from __future__ import annotations

import os

import pytest
from harness import Bundle, Runner


def test_cwd_only_root_can_enter(runner: Runner, bundle: Bundle) -> None:
    """runc chdirs to process.cwd before the user switch too: a 0700 root directory works for uid 1000."""
    if runner.rootless:
        pytest.skip("a rootless container maps one uid: there is no other user to switch to")
    d = bundle.add_dir("/secret")
    os.chmod(d, 0o700)
    bundle.process["cwd"] = "/secret"
    bundle.process["user"] = {"uid": 1000, "gid": 1000}
    bundle.sh("pwd; id -u; ls . 2>&1 >/dev/null | head -1")
    cid = runner.new_id()
    r = runner.run(cid, bundle)
    lines = r.ok().stdout.splitlines()
    assert lines[:2] == ["/secret", "1000"], r
    assert "Permission denied" in lines[2], "the user itself still cannot read the directory"


def test_cwd_only_the_user_can_enter(runner: Runner, bundle: Bundle) -> None:
    """The user's own 0700 cwd still works: entered as root first, or again as the user."""
    if runner.rootless:
        pytest.skip("a rootless container maps one uid: there is no other user to switch to")
    d = bundle.add_dir("/mine")
    os.chown(d, 1000, 1000)
    os.chmod(d, 0o700)
    bundle.process["cwd"] = "/mine"
    bundle.process["user"] = {"uid": 1000, "gid": 1000}
    bundle.sh("pwd")
    cid = runner.new_id()
    r = runner.run(cid, bundle)
    assert r.ok().stdout.strip() == "/mine"
