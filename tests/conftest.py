"""Shared pytest fixtures: the runtime under test, the test user, the busybox rootfs, bundles.

Fixtures other test files can reuse:

* ``runtime`` (session): :class:`harness.RuntimeInfo` — path, name, ``is_pyouki``.
* ``is_pyouki`` (session): bool, True when the runtime under test is pyouki.
* ``test_user`` (session): :class:`harness.TestUser`, the unprivileged ``pyouki-test`` user
  (created with subuid/subgid ranges if missing).
* ``session_dir`` (session): a 0755 temp dir removed (mounts detached first) at session end.
* ``rootfs_template`` (session): path of the shared busybox rootfs (do not modify it).
* ``mode`` (function, parametrized): "root" or "rootless".
* ``workdir`` (function): a fresh 0755 dir for this test under ``session_dir``.
* ``runner`` (function): :class:`harness.Runner` for ``mode`` with its own ``--root``,
  ``XDG_RUNTIME_DIR`` and cleanup of every container it touched.
* ``make_bundle`` (function): factory ``make_bundle(name="bundle", args=("true",))`` returning
  a :class:`harness.Bundle` made from the runtime's own ``spec`` (``spec --rootless`` as the
  user in rootless mode), with ``process.terminal=false`` and the leftover marker in env.
* ``bundle`` (function): ``make_bundle()``.
* ``xfail_runc`` (function): ``xfail_runc(reason)`` marks the current test xfail when the
  runtime is not pyouki (for things runc itself gets wrong on this machine).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from harness import (
    MARK_VAR,
    Bundle,
    Runner,
    RuntimeInfo,
    TestUser,
    build_rootfs_template,
    clone_rootfs,
    detach_mounts_under,
    ensure_test_user,
    find_runtime,
)

MODES = ("root", "rootless")


@pytest.fixture(scope="session")
def runtime() -> RuntimeInfo:
    """The runtime under test (``PYOUKI_TEST_RUNTIME`` or the venv's pyouki)."""
    info = find_runtime()
    if not os.access(info.path, os.X_OK):
        pytest.skip(f"runtime {info.path} is not executable")
    return info


@pytest.fixture(scope="session")
def is_pyouki(runtime: RuntimeInfo) -> bool:
    """True when the runtime under test is pyouki (its own message wording is asserted)."""
    return runtime.is_pyouki


@pytest.fixture(scope="session")
def test_user() -> TestUser:
    """The unprivileged test user, created if missing."""
    if os.geteuid() != 0:
        pytest.skip("the lifecycle suite runs as root (it drives the runtime as root and as a user)")
    return ensure_test_user()


@pytest.fixture(scope="session")
def session_dir() -> Iterator[Path]:
    """A world-traversable temp dir for the whole session (pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="pyouki-lc-"))
    os.chmod(d, 0o755)
    yield d
    if not os.environ.get("PYOUKI_TEST_KEEP"):
        # A leaked bind mount under d would make rmtree delete the mount's source: detach first.
        detach_mounts_under(d)
        shutil.rmtree(d, ignore_errors=True)
        if d.exists():  # a container process may still have been writing: one more go
            time.sleep(0.5)
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def rootfs_template(session_dir: Path) -> Path:
    """The busybox rootfs every bundle is cloned from."""
    return build_rootfs_template(session_dir / "rootfs-template")


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """Run the test as root and as the unprivileged user."""
    return str(request.param)


@pytest.fixture
def workdir(session_dir: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh per-test directory, traversable by the test user."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in request.node.name)[:80]
    d = Path(tempfile.mkdtemp(prefix=f"{safe}-", dir=session_dir))
    os.chmod(d, 0o755)
    return d


@pytest.fixture
def runner(runtime: RuntimeInfo, mode: str, test_user: TestUser, workdir: Path) -> Iterator[Runner]:
    """A Runner for this test's mode; removes every container it touched afterwards."""
    r = Runner(runtime=runtime, mode=mode, user=test_user, workdir=workdir)
    yield r
    r.cleanup()


@pytest.fixture(scope="session")
def _spec_cache() -> dict[str, dict[str, Any]]:
    return {}


def _spec_config(runner: Runner, cache: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The runtime's ``spec`` (or ``spec --rootless``) output, computed once per mode."""
    if runner.mode not in cache:
        d = runner.workdir / "spec"
        d.mkdir()
        if runner.owner:
            os.chown(d, *runner.owner)
        args = ["spec", "--rootless"] if runner.rootless else ["spec"]
        runner.cmd(*args, root=None, cwd=d).ok()
        cache[runner.mode] = json.loads((d / "config.json").read_text())
        shutil.rmtree(d)
    return copy.deepcopy(cache[runner.mode])


@pytest.fixture
def make_bundle(
    runner: Runner, rootfs_template: Path, _spec_cache: dict[str, dict[str, Any]]
) -> Callable[..., Bundle]:
    """Factory for bundles: ``make_bundle(name="bundle", args=("true",))``."""

    def _make(name: str = "bundle", args: Sequence[str] = ("true",)) -> Bundle:
        path = runner.workdir / name
        path.mkdir()
        os.chmod(path, 0o755)
        if runner.owner:
            os.chown(path, *runner.owner)
        clone_rootfs(rootfs_template, path / "rootfs", runner.owner)
        config = _spec_config(runner, _spec_cache)
        config["process"]["terminal"] = False
        config["process"]["args"] = list(args)
        config["process"].setdefault("env", []).append(f"{MARK_VAR}={runner.mark}")
        config["root"] = {"path": "rootfs", "readonly": False}
        b = Bundle(path=path, config=config, owner=runner.owner)
        b.write()
        return b

    return _make


@pytest.fixture
def bundle(make_bundle: Callable[..., Bundle]) -> Bundle:
    """A default bundle running ``true``."""
    return make_bundle()


@pytest.fixture
def xfail_runc(runtime: RuntimeInfo, request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``xfail_runc(reason)``: expect failure of this test when the runtime is not pyouki."""

    def _mark(reason: str) -> None:
        if not runtime.is_pyouki:
            request.node.add_marker(pytest.mark.xfail(reason=f"runc: {reason}", strict=False))

    return _mark


# The host's device nodes that a runtime binds into containers or could be steered to (planted
# /dev symlinks, stdio fds chowned to the container's root): (name, major, minor), all 0666 root.
HOST_NODES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9),
              ("tty", 5, 0), ("ptmx", 5, 2))


def _node_facts() -> dict[str, tuple[int, int, int, int, int] | None]:
    facts: dict[str, tuple[int, int, int, int, int] | None] = {}
    for name, _, _ in HOST_NODES:
        try:
            st = os.lstat(f"/dev/{name}")
        except FileNotFoundError:
            facts[name] = None
            continue
        facts[name] = (st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_rdev)
    return facts


def _restore_node(name: str, major: int, minor: int) -> None:
    path = f"/dev/{name}"
    try:
        st = os.lstat(path)
        if not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(major, minor):
            os.unlink(path)
    except FileNotFoundError:
        pass
    if not os.path.exists(path):
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
    os.chown(path, 0, 0)
    os.chmod(path, 0o666)


@pytest.fixture(autouse=True)
def host_devices_untouched() -> Iterator[None]:
    """Every test: the host's /dev nodes are exactly as before (same inode, mode, owner, device).

    A test whose runtime (or reference runtime) damaged one fails, and the node is put back so the
    damage cannot spread to the tests that follow (a chowned /dev/null breaks every rootless run)."""
    if os.geteuid() != 0:
        yield
        return
    before = _node_facts()
    yield
    after = _node_facts()
    changed = [name for name in before if after[name] != before[name]]
    if changed:
        for name, major, minor in HOST_NODES:
            if name in changed:
                _restore_node(name, major, minor)
        pytest.fail(f"the host's /dev changed during this test: {', '.join('/dev/' + n for n in changed)} "
                    f"(before {before}, after {after}); restored")
