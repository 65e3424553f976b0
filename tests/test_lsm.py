"""Security labels (process.apparmorProfile, process.selinuxLabel, linux.mountLabel) on this host.

This machine's kernel runs no LSM, so here the labels must be refused with the field's JSON path
(runc fails on them too), except the AppArmor profile ``unconfined``, which every process already
is. Applying them for real is tested where AppArmor is enabled: the qemu tier
(tests/test_vm_enforcement.py, ``test_vm_apparmor_*``).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from harness import Bundle, Runner, RuntimeInfo, assert_failed_cleanly
from test_errors import create_fails, nothing_left

from pyouki import lsm
from pyouki.errors import ConfigError

SELINUX_LABEL = "system_u:system_r:container_t:s0:c1,c2"
MOUNT_LABEL = "system_u:object_r:container_file_t:s0:c1,c2"


@pytest.fixture
def no_lsm() -> None:
    """These tests are about a host without AppArmor and SELinux (this machine kind)."""
    if lsm.apparmor_enabled() or lsm.selinux_enabled():
        pytest.skip("this host runs an LSM: the VM tier tests applying labels")


def _running(runner: Runner, bundle: Bundle) -> str:
    bundle.sh("sleep 1000")
    cid = runner.new_id()
    runner.create(cid, bundle).ok()
    runner.start(cid).ok()
    return cid


# -- refused where the LSM is off: create and run, root and rootless ------------------------


def test_apparmor_profile_refused_without_apparmor(no_lsm: None, runtime: RuntimeInfo, runner: Runner,
                                                   bundle: Bundle) -> None:
    """Was silently ignored by create: the container ran unconfined."""
    bundle.process["apparmorProfile"] = "containers-default-0.50.1"
    bundle.write()
    create_fails(runtime, runner, bundle, "process.apparmorProfile", "containers-default-0.50.1",
                 "apparmor is not enabled")


def test_selinux_label_refused_without_selinux(no_lsm: None, runtime: RuntimeInfo, runner: Runner,
                                               bundle: Bundle) -> None:
    """runc: "selinux label is specified in config, but selinux is disabled or not supported"."""
    bundle.process["selinuxLabel"] = SELINUX_LABEL
    bundle.write()
    create_fails(runtime, runner, bundle, "process.selinuxLabel", "selinux is disabled or not supported")


def test_mount_label_refused_without_selinux(no_lsm: None, runtime: RuntimeInfo, runner: Runner,
                                             bundle: Bundle) -> None:
    """runc fails later, at the first labelled mount (context= is EINVAL without SELinux)."""
    bundle.linux["mountLabel"] = MOUNT_LABEL
    bundle.write()
    create_fails(runtime, runner, bundle, "linux.mountLabel", "selinux is disabled or not supported")


def test_label_of_the_wrong_type_refused(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    bundle.process["apparmorProfile"] = ["unconfined"]
    bundle.write()
    create_fails(runtime, runner, bundle, "process.apparmorProfile", "must be a string", also_run=False)


def test_apparmor_unconfined_accepted_without_apparmor(no_lsm: None, runner: Runner, bundle: Bundle,
                                                       xfail_runc: Callable[[str], None]) -> None:
    """`unconfined` asks for what every process already is without AppArmor: create, start, exec."""
    xfail_runc("1.1.5 writes 'exec unconfined' to /proc/self/attr/exec and fails with EINVAL")
    bundle.process["apparmorProfile"] = lsm.UNCONFINED
    cid = _running(runner, bundle)
    r = runner.cmd("exec", cid, "sh", "-c", "echo in-container").ok()  # inherits `unconfined`
    assert r.stdout.strip() == "in-container"
    r = runner.cmd("exec", "--apparmor", "unconfined", cid, "sh", "-c", "echo flag").ok()
    assert r.stdout.strip() == "flag"
    runner.delete(cid, "--force").ok()
    bundle.sh("echo ran; exit 3")
    r = runner.run(runner.new_id(), bundle)
    assert r.returncode == 3 and r.stdout.strip() == "ran", r


# -- exec: the same rules for --apparmor, --process-label and --process ------------------------


def test_exec_labels_refused_without_lsm(no_lsm: None, runtime: RuntimeInfo, runner: Runner,
                                         bundle: Bundle) -> None:
    cid = _running(runner, bundle)
    r = runner.cmd("exec", "--apparmor", "docker-default", cid, "true")
    assert_failed_cleanly(runtime, r, "process.apparmorProfile", "docker-default", "apparmor is not enabled")
    r = runner.cmd("exec", "--process-label", SELINUX_LABEL, cid, "true")
    assert_failed_cleanly(runtime, r, "process.selinuxLabel", "selinux is disabled or not supported")
    process = {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "apparmorProfile": "docker-default"}
    path = runner.workdir / "process.json"
    path.write_text(json.dumps(process))
    path.chmod(0o644)
    r = runner.cmd("exec", "--process", str(path), cid)
    assert_failed_cleanly(runtime, r, "process.apparmorProfile")
    with nothing_left(runner):
        runner.delete(cid, "--force").ok()


# -- pure logic ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "label", "want"),
    [
        ("", MOUNT_LABEL, f'context="{MOUNT_LABEL}"'),
        ("mode=755,size=65536k", MOUNT_LABEL, f'mode=755,size=65536k,context="{MOUNT_LABEL}"'),
        ("newinstance,ptmxmode=0666", "", "newinstance,ptmxmode=0666"),
        ("", "", ""),
    ],
)
def test_mount_data_adds_a_quoted_context(data: str, label: str, want: str) -> None:
    """go-selinux FormatMountLabel: quoted, since an MCS label holds a comma."""
    assert lsm.mount_data(data, label) == want


def test_exec_inherits_the_container_labels() -> None:
    """runc's exec: the container's profile and label unless the process names its own."""
    config = {"process": {"apparmorProfile": "ctr-profile", "selinuxLabel": SELINUX_LABEL}}
    assert lsm.inherit({"args": ["sh"]}, config) == {"args": ["sh"], "apparmorProfile": "ctr-profile",
                                                    "selinuxLabel": SELINUX_LABEL}
    own = {"args": ["sh"], "apparmorProfile": "unconfined"}
    assert lsm.inherit(own, config)["apparmorProfile"] == "unconfined"
    assert lsm.inherit({"args": ["sh"]}, {"process": {}}) == {"args": ["sh"]}


@pytest.mark.parametrize(
    ("process", "linux", "field"),
    [
        ({"apparmorProfile": 3}, {}, "process.apparmorProfile"),
        ({"apparmorProfile": "a\nchangehat x"}, {}, "process.apparmorProfile"),
        ({"selinuxLabel": "a\0b"}, {}, "process.selinuxLabel"),
        ({}, {"mountLabel": 'x" ,dev'}, "linux.mountLabel"),
    ],
)
def test_malformed_labels_are_refused(process: dict, linux: dict, field: str) -> None:
    """One record written to /proc, one quoted mount option: no newline, NUL or quote."""
    with pytest.raises(ConfigError) as e:
        lsm.check(process, linux)
    assert e.value.field == field


def test_no_label_needs_no_lsm() -> None:
    lsm.check({"args": ["true"]}, {})
    lsm.check({"apparmorProfile": "", "selinuxLabel": None}, {"mountLabel": ""})
