"""Idmapped bind mounts (`idmap`/`ridmap`, per-mount uidMappings/gidMappings), seen with `stat`
inside real containers; the direction is crun's: `{containerID: 1234, hostID: 0}` shows a file
owned by 1234 on disk as owned by 0 at the destination."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import THROWAWAY_DEV, Bundle, Runner, assert_failed_cleanly, detach_mounts_under

from pyouki import idmapmount

ONE_TO_ROOT = [{"containerID": 1234, "hostID": 0, "size": 1}]


def _source(workdir: Path) -> Path:
    """A host directory with a root-owned file and one owned by 1234:1234."""
    src = workdir / "src"
    src.mkdir()
    os.chmod(src, 0o755)
    (src / "f0").write_text("root\n")
    (src / "f1234").write_text("1234\n")
    os.chown(src / "f1234", 1234, 1234)
    return src


def _idmap_mount(bundle: Bundle, src: Path, options: list[str], maps: list[dict] | None = ONE_TO_ROOT) -> int:
    i = bundle.add_mount("/m", "bind", str(src), options)
    if maps is not None:
        bundle.config["mounts"][i]["uidMappings"] = maps
        bundle.config["mounts"][i]["gidMappings"] = maps
    return i


def _owners(runner: Runner, bundle: Bundle, *paths: str) -> dict[str, str]:
    bundle.sh("stat -c '%n %u:%g' " + " ".join(paths))
    out = runner.run(runner.new_id(), bundle).ok().stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


def _root_only(runner: Runner) -> None:
    if runner.rootless:
        pytest.skip("idmapped mounts of host directories need root (see test_rootless_is_refused_clearly)")


def test_per_mount_mapping_direction(runner: Runner, make_bundle, workdir: Path) -> None:
    _root_only(runner)
    bundle = make_bundle()
    _idmap_mount(bundle, _source(workdir), ["bind", "idmap"])
    owners = _owners(runner, bundle, "/m/f0", "/m/f1234")
    assert owners == {"/m/f0": "65534:65534", "/m/f1234": "0:0"}
    # the host's view is untouched
    assert os.stat(workdir / "src" / "f1234").st_uid == 1234


def test_writes_through_the_mapping(runner: Runner, make_bundle, workdir: Path) -> None:
    """A file created by container root on the idmapped mount lands on disk as 1234."""
    _root_only(runner)
    bundle = make_bundle()
    src = _source(workdir)
    os.chown(src, 1234, 1234)  # container root (1234 on disk) may write in it
    _idmap_mount(bundle, src, ["rbind", "idmap"])
    bundle.sh("echo hi > /m/new && stat -c %u /m/new")
    assert runner.run(runner.new_id(), bundle).ok().stdout.strip() == "0"
    st = os.stat(src / "new")
    assert (st.st_uid, st.st_gid) == (1234, 1234)


def test_mappings_without_the_option_are_applied(runner: Runner, make_bundle, workdir: Path) -> None:
    """Like crun: mappings on a mount idmap it even without `idmap` (never silently ignored)."""
    _root_only(runner)
    bundle = make_bundle()
    _idmap_mount(bundle, _source(workdir), ["bind"])
    assert _owners(runner, bundle, "/m/f1234") == {"/m/f1234": "0:0"}


@pytest.mark.parametrize("option, sub_mapped", [("ridmap", True), ("idmap", False)])
def test_ridmap_maps_submounts(runner: Runner, make_bundle, workdir: Path, option: str, sub_mapped: bool) -> None:
    _root_only(runner)
    bundle = make_bundle()
    src = _source(workdir)
    sub = src / "sub"
    sub.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755,uid=1234,gid=1234", "tmpfs", str(sub)], check=True)
    try:
        _idmap_mount(bundle, src, ["rbind", option])
        owners = _owners(runner, bundle, "/m/f1234", "/m/sub")
    finally:
        detach_mounts_under(sub)
    assert owners["/m/f1234"] == "0:0"
    # without ridmap only the top mount is idmapped: the submount shows its ids unmapped
    assert owners["/m/sub"] == ("0:0" if sub_mapped else "1234:1234")


def test_container_user_namespace_mapping_is_the_default(runner: Runner, make_bundle, workdir: Path) -> None:
    """No per-mount mappings: the container's own mapping, so host ids show as they are on disk."""
    _root_only(runner)
    bundle = make_bundle()
    base = runner.user.subuid[0]
    bundle.add_namespace("user")
    bundle.linux["uidMappings"] = [{"containerID": 0, "hostID": base, "size": 65536}]
    bundle.linux["gidMappings"] = [{"containerID": 0, "hostID": runner.user.subgid[0], "size": 65536}]
    subprocess.run(["chown", "-R", f"{base}:{runner.user.subgid[0]}", str(bundle.rootfs)], check=True)
    _idmap_mount(bundle, _source(workdir), ["bind", "idmap"], maps=None)
    owners = _owners(runner, bundle, "/m/f0", "/m/f1234")
    # ids show inside the container as they are on disk (without idmap: 65534, unmapped)
    assert owners == {"/m/f0": "0:0", "/m/f1234": "1234:1234"}


def test_idmap_without_any_mapping_is_an_error(runner: Runner, make_bundle, workdir: Path) -> None:
    """The spec's MUST: no mappings on the mount and no user namespace."""
    _root_only(runner)
    bundle = make_bundle()
    i = _idmap_mount(bundle, _source(workdir), ["bind", "idmap"], maps=None)
    bundle.write()
    result = runner.run(runner.new_id(), bundle)
    assert_failed_cleanly(runner.runtime, result, f"mounts[{i}].options", "idmap")


def test_half_mappings_are_an_error(runner: Runner, make_bundle, workdir: Path) -> None:
    _root_only(runner)
    bundle = make_bundle()
    i = _idmap_mount(bundle, _source(workdir), ["bind", "idmap"], maps=None)
    bundle.config["mounts"][i]["uidMappings"] = ONE_TO_ROOT
    bundle.write()
    result = runner.run(runner.new_id(), bundle)
    assert_failed_cleanly(runner.runtime, result, f"mounts[{i}].gidMappings")


def test_idmap_on_a_non_bind_mount_is_refused(runner: Runner, make_bundle) -> None:
    _root_only(runner)
    bundle = make_bundle()
    i = bundle.add_mount("/m", "tmpfs", "tmpfs", ["idmap"])
    bundle.config["mounts"][i]["uidMappings"] = ONE_TO_ROOT
    bundle.config["mounts"][i]["gidMappings"] = ONE_TO_ROOT
    bundle.write()
    result = runner.run(runner.new_id(), bundle)
    assert_failed_cleanly(runner.runtime, result, f"mounts[{i}].options", "bind mounts")


def test_rootless_is_refused_clearly(runner: Runner, make_bundle, workdir: Path) -> None:
    """The kernel lets only a process privileged over the source's filesystem idmap it."""
    if not runner.rootless:
        pytest.skip("the rootless refusal")
    bundle = make_bundle()
    i = _idmap_mount(bundle, _source(workdir), ["bind", "idmap"])
    bundle.write()
    result = runner.run(runner.new_id(), bundle)
    assert_failed_cleanly(runner.runtime, result, f"mounts[{i}].options", "need root")


def test_features_lists_idmap(runner: Runner) -> None:
    doc = json.loads(runner.cmd("features", root=None).ok().stdout)
    assert doc["linux"]["mountExtensions"]["idmap"]["enabled"] is True


def test_wanted_unit() -> None:
    assert idmapmount.wanted({"options": ["rbind", "ridmap"]})
    assert idmapmount.wanted({"options": ["bind"], "uidMappings": []})
    assert not idmapmount.wanted({"options": ["bind", "ro"]})


def _crun_run(bundle: Bundle, workdir: Path) -> str:
    """crun on the same bundle; this host's hybrid cgroups stop crun, so it runs in a private
    mount namespace over a cgroup2-only /sys/fs/cgroup, without cgroup management."""
    config = json.loads(bundle.config_path.read_text())
    config["ociVersion"] = "1.0.2"  # Debian's crun 1.8.1 refuses newer ones
    (workdir / "crun-bundle").mkdir()
    os.symlink(bundle.rootfs, workdir / "crun-bundle" / "rootfs")
    (workdir / "crun-bundle" / "config.json").write_text(json.dumps(config))
    script = (THROWAWAY_DEV + "umount -l /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup && "
              f"exec crun --root {workdir}/crun-state --cgroup-manager=disabled run "
              f"--bundle {workdir}/crun-bundle crun-{os.getpid()}")
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], input="",
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("case", ["per-mount", "no-option", "userns"])
def test_same_owners_as_crun(runner: Runner, make_bundle, workdir: Path, case: str) -> None:
    _root_only(runner)
    if not shutil.which("crun"):
        pytest.skip("crun is not installed")
    bundle = make_bundle()
    src = _source(workdir)
    if case == "userns":
        bundle.add_namespace("user")
        bundle.linux["uidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
        bundle.linux["gidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
        subprocess.run(["chown", "-R", "200000:200000", str(bundle.rootfs)], check=True)
        _idmap_mount(bundle, src, ["bind", "idmap"], maps=None)
    else:
        _idmap_mount(bundle, src, ["bind"] if case == "no-option" else ["rbind", "ridmap"])
    bundle.sh("stat -c '%n %u:%g' /m/f0 /m/f1234")
    ours = runner.run(runner.new_id(), bundle).ok().stdout
    assert ours == _crun_run(bundle, workdir)
