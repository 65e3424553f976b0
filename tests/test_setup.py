"""Setting pyouki up (issue 11, point 4): `pip install .` gives the lean command, and
scripts/setup-machine re-runs itself through sudo for a normal user.

The pip test installs into a throw-away venv (never /opt/pyouki/venv); the sudo tests stop at the
re-run, with a stand-in `sudo` that records how it was called.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import TestUser

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "scripts" / "setup-machine"


@pytest.fixture(scope="module")
def pip_venv() -> Iterator[Path]:
    """A throw-away venv with `pip install .` of a copy of the tree (as a user would)."""
    tmp = Path(tempfile.mkdtemp(prefix="pyouki-pip-"))
    try:
        src = tmp / "src"
        shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "tests", "bench", "*.egg-info", "build",
                                                                 "__pycache__", ".*_cache", ".launcher"))
        venv = tmp / "venv"
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        res = subprocess.run([*pip, str(src)], capture_output=True, text=True, timeout=600, cwd=tmp)
        if res.returncode != 0:
            pytest.fail(f"pip install . failed: {res.stderr[-2000:]}")
        yield venv
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_pip_install_gives_the_lean_launcher(pip_venv: Path) -> None:
    script = (pip_venv / "bin/pyouki").read_text()
    assert script.splitlines()[0] == f"#!{pip_venv}/bin/python"  # pip's rewrite of the first line
    assert "def _find_pyouki" in script  # bin/pyouki, not pip's console-script wrapper
    res = subprocess.run([str(pip_venv / "bin/pyouki"), "--root", str(pip_venv / "state"), "state", "nosuch"],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == 1 and res.stderr == "pyouki: nosuch: container does not exist\n"


def _imports(python: Path, flags: list[str], script: Path, *args: str) -> tuple[set[str], str]:
    """Modules imported by `python [flags] script args` (as the kernel would start the script), and stderr."""
    res = subprocess.run([str(python), "-X", "importtime", *flags, str(script), *args], capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin"})
    imported = {line.split("|")[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    return imported, res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("flags", [[], ["-IS"]])
def test_launcher_imports_no_re(pip_venv: Path, flags: list[str]) -> None:
    """The command, as pip wrote it and as setup-machine starts it (-IS), never imports re."""
    imported, stderr = _imports(pip_venv / "bin/python", flags, pip_venv / "bin/pyouki", "--root",
                                str(pip_venv / "state"), "state", "nosuch")
    assert "pyouki.cli.hot" in imported, stderr[-1000:]  # the command's parser ran
    assert not imported & {"re", "click", "json", "typing"}, sorted(imported)
    assert ("site" in imported) is not flags
    assert stderr.splitlines()[-1] == "pyouki: nosuch: container does not exist"


def test_launcher_finds_an_editable_install(tmp_path: Path) -> None:
    """-IS and a compat-mode editable install: the source tree comes from its .pth file, no site module."""
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    site_packages = venv / f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
    (site_packages / "__editable__.pyouki-0.1.0.pth").write_text(f"{REPO}\n")
    launcher = venv / "bin/pyouki"
    shutil.copy(REPO / "bin/pyouki", launcher)
    imported, stderr = _imports(venv / "bin/python", ["-IS"], launcher, "--root", str(tmp_path / "state"), "state",
                                "nosuch")
    assert "site" not in imported and "pyouki" in imported, stderr[-1000:]
    assert stderr.splitlines()[-1] == "pyouki: nosuch: container does not exist"


def _setup_as_user(user: TestUser, path: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": path, "HOME": str(tmp), "PYOUKI_VENV": str(tmp / "venv"), "PYOUKI_NO_VAGRANT": "1",
           "UNRELATED": "x"}
    return subprocess.run(["/usr/bin/setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", "--",
                           "/bin/bash", str(SETUP), "--reinstall"], capture_output=True, text=True, env=env, cwd=tmp,
                          timeout=60)


@pytest.fixture
def user_tmp(test_user: TestUser) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="pyouki-setup-"))
    os.chmod(d, 0o755)
    os.chown(d, test_user.uid, test_user.gid)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_setup_reruns_itself_with_sudo(test_user: TestUser, user_tmp: Path) -> None:
    fake = user_tmp / "bin"
    fake.mkdir()
    record = user_tmp / "sudo-args"
    (fake / "sudo").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\nenv > {record}.env\n')
    (fake / "sudo").chmod(0o755)
    res = _setup_as_user(test_user, f"{fake}:/usr/bin:/bin", user_tmp)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "setup-machine: not root: re-running with sudo\n"
    assert record.read_text().splitlines() == [
        "--preserve-env=PYOUKI_NO_VAGRANT,PYOUKI_VENV,PYOUKI_LINK_DIR", "--", str(SETUP), "--reinstall"]


def test_setup_without_sudo_says_so(test_user: TestUser, user_tmp: Path) -> None:
    no_sudo = user_tmp / "bin-empty"
    no_sudo.mkdir()
    for tool in ("dirname", "id"):  # what the script needs before it gives up
        os.symlink(shutil.which(tool) or f"/usr/bin/{tool}", no_sudo / tool)
    res = _setup_as_user(test_user, str(no_sudo), user_tmp)
    assert res.returncode == 1
    assert res.stderr == f"setup-machine: must run as root, and sudo is not installed (as root: {SETUP})\n"
    assert not (user_tmp / "venv").exists()
