"""The project's Vagrantfiles for real: ``vagrant up`` boots, provisions and runs the demo (tests/vagrant/).

No box registry is reachable here, so tests/vagrant/box.py builds a local libvirt box from the
qemu tier's ingredients (cached) and adds it as ``debian/bookworm64`` to a throw-away
VAGRANT_HOME; tests/vagrant/run.py runs libvirtd, qemu (TCG) and vagrant in a network namespace
of their own. Both Vagrantfiles are brought up at once, each on a copy of the tree; a subset of the
test suite runs inside each (tests/vagrant/run.py's SUITE), then both are destroyed; nothing may
be left running. Part of the default run (CI); PYOUKI_NO_VM=1 skips it (tests/vagrant/README.md
has its durations).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness import load_by_path

REPO = Path(__file__).resolve().parents[1]


run = load_by_path("pyouki_tests_vagrant_run", "tests/vagrant/run.py")


def _apt_packages() -> list[str]:
    pkgs = []
    for f in ("tests/vagrant/APT_PACKAGES", "tests/vm/APT_PACKAGES", "tests/systemd/APT_PACKAGES"):
        lines = (REPO / f).read_text().splitlines()
        pkgs += [p.strip() for p in lines if p.strip() and not p.startswith("#")]
    return pkgs


def _ensure_tools() -> None:
    """Install the tier's host packages if missing; skip only if that is impossible."""
    if os.geteuid() != 0:
        pytest.skip("the Vagrant tier needs root (libvirtd, network namespaces, chroot)")
    if os.environ.get("PYOUKI_NO_VM"):
        pytest.skip("PYOUKI_NO_VM is set")
    if not run.missing_tools():
        return
    res = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *_apt_packages()],
                         capture_output=True, text=True, timeout=900)
    if res.returncode != 0 or run.missing_tools():
        pytest.skip(f"cannot install the Vagrant tier's tools: {res.stderr.strip()[-300:]}")


@pytest.fixture(scope="module")
def vagrant_results() -> dict[str, Any]:
    """libvirtd in its namespace, the local box added, both Vagrantfiles up, tested and destroyed
    at once; afterwards nothing of it may remain."""
    _ensure_tools()
    with run.libvirt_env() as env:
        run.add_box(env)
        results = {r.vagrantfile: r for r in run.up_all(env, ["Vagrantfile", "Vagrantfile.root"])}
    assert not Path(f"/proc/{env.libvirtd_pid}").exists(), "libvirtd survived the tier"
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert env.netns not in netns
    return results


def _check(res: Any, demo_user: str) -> None:
    log = res.up_log
    assert res.up_rc == 0, f"vagrant up failed ({res.up_rc}):\n{log[-6000:]}"
    # the provisioner ran scripts/setup-machine to its end, offline, then the demo
    assert "setup-machine: ready: pyouki=/opt/pyouki/venv/bin/pyouki" in log, log[-6000:]
    # the demo's line, printed by busybox inside the container
    assert "hello from pyouki: uid=0 hostname=" in log, log[-6000:]
    assert "demo: ok" in log and demo_user in log, log[-6000:]
    # the test suite's subset inside the VM, from the synced tree, as root
    suite = res.suite_log
    assert res.suite_rc == 0, f"the tests inside the VM failed ({res.suite_rc}):\n{suite[-6000:]}"
    summary = [line for line in suite.splitlines() if " passed" in line]
    assert summary and "failed" not in summary[-1] and "error" not in summary[-1], suite[-3000:]
    assert int(summary[-1].split()[0]) >= 8, summary[-1]  # every selected test ran
    assert res.destroy_rc == 0, res.destroy_log
    assert res.left == [], f"still running after vagrant destroy: {res.left}"


def test_vagrant_up_rootless_demo_tests_then_destroy(vagrant_results: dict[str, Any]) -> None:
    """Vagrantfile: setup-machine as root, the demo as the vagrant user (rootless), rootless tests."""
    _check(vagrant_results["Vagrantfile"], "(rootless)")


def test_vagrant_up_rootful_demo_tests_then_destroy(vagrant_results: dict[str, Any]) -> None:
    """Vagrantfile.root: setup-machine and the demo as root (rootful), rootful tests."""
    _check(vagrant_results["Vagrantfile.root"], "(rootful)")
