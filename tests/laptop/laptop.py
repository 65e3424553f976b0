"""The laptop tier: podman on a Debian 12 "laptop" VM, pyouki next to runc (qemu, TCG).

Usable as a library (``build_image``, ``run_guest``) and as a command::

    python tests/laptop/laptop.py build      # once: the image (minutes: podman, setup-machine)
    python tests/laptop/laptop.py run        # boot once, run tests/laptop/guest.py, print JSON
    python tests/laptop/laptop.py table F    # the README's pyouki-vs-runc table from a run's JSON

The image is the VM tier's (tests/vm/vm.py: the nspawn rootfs, Debian's stock kernel with
AppArmor, systemd, cgroup v2, the lingering user ``tester`` with a delegated user manager) plus
what a user of podman has on a laptop: ``apt-get install podman`` with its Recommends
(conmon, runc, crun, fuse-overlayfs, slirp4netns, uidmap, catatonit, buildah,
dbus-user-session), CNI plugins and iptables for rootful networks, and pyouki installed by the
project's own ``scripts/setup-machine``. That first run of setup-machine happens at build time in
the image's chroot (with the host's network); the guest has no network and runs it again at
every boot against the current tree, where it must find nothing to install (the image key
includes setup-machine and pyproject.toml, so a change to either rebuilds the image).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# Bump when the image set-up below changes: it is part of the cache key.
SETUP_VERSION = "1"
# `apt-get install podman` as a user types it (with Recommends), plus what rootful networks use
# (podman 4.3 on bookworm: CNI, the bridge and portmap plugins over iptables).
PODMAN_PACKAGES = ("podman", "containernetworking-plugins", "iptables", "bsdutils")
IMAGE_SIZE = "6G"
# pyouki's checkout inside the image: setup-machine installs it editable from there, and each
# boot copies the current tree over it (so the image need not change with pyouki's code).
GUEST_REPO = "/opt/pyouki-src"
# The guest run, tests included (podman under TCG: ~4 min quiet, ~11 at load 6-8 on 2 cores);
# qemu is killed after it. The test unit itself has no timeout (TimeoutStartSec=infinity).
BOOT_TIMEOUT = float(os.environ.get("PYOUKI_LAPTOP_TIMEOUT") or 2400)
# Both modes and both runtimes run at once in the guest: four podman streams, their conmons,
# containers and a pod each.
MEMORY_MB = 2048
# rootful --userns=auto takes its ranges from the user `containers` (containers-storage's default)
AUTO_USERNS = "containers:300000:200000\n"
# Copied into the share (the guest's tree): what setup-machine and the guest scripts need.
TREE = ("pyouki", "bin", "scripts", "pyproject.toml", "README.md", "tests/laptop/guest.py")


def _vm() -> Any:
    """tests/vm/vm.py, whose helpers build and boot the image."""
    name = "pyouki_tests_vm"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests/vm/vm.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def image_dir() -> Path:
    """The cached image; its name changes with the VM tier's image, the packages or setup-machine."""
    vm = _vm()
    text = "\n".join((vm.image_dir().name, SETUP_VERSION, *PODMAN_PACKAGES, IMAGE_SIZE, GUEST_REPO, AUTO_USERNS,
                      (REPO / "scripts/setup-machine").read_text(),
                      (REPO / "pyproject.toml").read_text()))
    return vm.cache_dir() / f"laptop-bookworm-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _copy_tree(dest: Path) -> None:
    """pyouki's tree as setup-machine and the guest need it (no .git, no caches)."""
    ignore = shutil.ignore_patterns("__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache")
    for rel in TREE:
        src, dst = REPO / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=ignore)
        else:
            shutil.copy(src, dst)


def _install_podman(root: Path, debs: Path) -> None:
    """apt-get podman, then scripts/setup-machine, in the chroot (private mount namespace).

    The chroot gets a throw-away /dev (a tmpfs with the usual nodes), never the host's:
    setup-machine chmods /dev/fuse and package scripts may touch nodes.
    """
    _copy_tree(root / GUEST_REPO.lstrip("/"))
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    wheels = _wheelhouse()
    (root / "tmp/laptop-wheels").mkdir()
    debs.mkdir(parents=True, exist_ok=True)
    r = str(root)
    apt = ("DEBIAN_FRONTEND=noninteractive apt-get -q -o Dpkg::Options::=--force-confold "
           "-o Dpkg::Options::=--force-confdef")
    nodes = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0),
             "fuse": (10, 229)}
    mknods = "; ".join(f"mknod -m 666 {r}/dev/{n} c {ma} {mi}" for n, (ma, mi) in nodes.items())
    inner = (f"{apt} update -q >/dev/null && {apt} install -y {' '.join(PODMAN_PACKAGES)} && "
             "unset PIP_CERT PIP_INDEX_URL PIP_EXTRA_INDEX_URL; "
             f"PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/laptop-wheels PYOUKI_NO_VAGRANT=1 {GUEST_REPO}/scripts/setup-machine")
    script = (
        f"set -e; mount -t proc proc {r}/proc; mount -t tmpfs -o mode=0755 laptop-dev {r}/dev; "
        f"{mknods}; mkdir {r}/dev/pts {r}/dev/shm; "
        f"ln -s /proc/self/fd {r}/dev/fd; "
        f"mount --bind {debs} {r}/var/cache/apt/archives; mount --bind -o ro {wheels} {r}/tmp/laptop-wheels; "
        f"chroot {r} sh -c '{inner}'"
    )
    _vm().run_checked(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], 1800,
               "installing podman and running scripts/setup-machine")
    (root / "etc/resolv.conf").unlink()
    (root / "tmp/laptop-wheels").rmdir()
    with open(root / "etc/subuid", "a") as f:
        f.write(AUTO_USERNS)
    with open(root / "etc/subgid", "a") as f:
        f.write(AUTO_USERNS)


def _wheelhouse() -> Path:
    """pyouki's Python dependencies (and its build backend), downloaded by the host's pip.

    setup-machine's pip inside the chroot installs from them only (``PIP_NO_INDEX``): the host's
    pip knows how this machine reaches PyPI, the chroot's does not. Cached per pyproject.toml.
    """
    vm = _vm()
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:12]
    dest = vm.cache_dir() / f"laptop-wheels-{key}"
    if (dest / ".complete").exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    vm.run_checked([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "-d", str(dest),
             f"{REPO}[dev,wasm]", "setuptools", "wheel"], 900, "pip download of pyouki's dependencies")
    for own in dest.glob("pyouki-*"):
        own.unlink()  # pyouki itself comes from the tree
    (dest / ".complete").touch()
    for old in vm.cache_dir().glob("laptop-wheels-*"):
        if old != dest:
            shutil.rmtree(old, ignore_errors=True)
    return dest


def _seed_debs(debs: Path) -> None:
    """Hard-link the host's downloaded .debs into the tier's apt cache (apt checks their hashes)."""
    debs.mkdir(parents=True, exist_ok=True)
    for deb in Path("/var/cache/apt/archives").glob("*.deb"):
        target = debs / deb.name
        if not target.exists():
            try:
                os.link(deb, target)
            except OSError:
                shutil.copy(deb, target)


def build_image(force: bool = False, log: bool = True) -> Path:
    """Build the laptop image once (the VM tier's recipe plus podman and pyouki) and cache it;
    return its directory."""
    vm = _vm()
    dest = image_dir()
    if (dest / "disk.img").exists() and not force:
        return dest
    _seed_debs(vm.cache_dir() / "apt-archives")
    return vm.build_guest_image(dest, lambda root: _install_podman(root, vm.cache_dir() / "apt-archives"),
                                size=IMAGE_SIZE, label="pyouki-laptop", force=force, log=log)


def busybox_tar(dest: Path) -> Path:
    """The image podman imports: busybox-static, its applet links, a passwd with a user 1000."""
    with tempfile.TemporaryDirectory(prefix="laptop-bb-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "root", "var/www"):
            (rootfs / d).mkdir(parents=True)
        (rootfs / "tmp").chmod(0o1777)
        shutil.copy("/bin/busybox", rootfs / "bin/busybox")
        import subprocess

        applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True, check=True).stdout
        for applet in applets.split():
            if applet != "busybox":
                (rootfs / "bin" / applet).symlink_to("busybox")
        (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/tmp:/bin/sh\n")
        (rootfs / "etc/group").write_text("root:x:0:\nuser:x:1000:\n")
        (rootfs / "var/www/index.html").write_text("hello from the laptop tier\n")
        subprocess.run(["tar", "--numeric-owner", "--owner=0", "--group=0", "-C", str(rootfs), "-cf", str(dest), "."],
                       check=True)
    return dest


def _stage_share(share: Path) -> None:
    """What the guest gets: pyouki's tree, the guest script, the busybox image, busybox, run.sh."""
    _copy_tree(share / "src")
    busybox_tar(share / "bb.tar")
    shutil.copy("/bin/busybox", share / "busybox")
    (share / "run.sh").write_text(
        "#!/bin/sh\n"
        "# Written by tests/laptop/laptop.py: refresh pyouki's tree, re-run setup-machine (offline),\n"
        "# then the podman scenarios; results in /share.\n"
        f"rm -rf {GUEST_REPO}/pyouki && cp -a /share/src/. {GUEST_REPO}/\n"
        f"PYOUKI_NO_VAGRANT=1 {GUEST_REPO}/scripts/setup-machine > /share/setup.log 2>&1\n"
        "echo $? > /share/setup.rc\n"
        f"python3 -m compileall -q {GUEST_REPO}/pyouki >/dev/null\n"
        f"cd {GUEST_REPO}\n"
        "export PYTHONDONTWRITEBYTECODE=1 LAPTOP_SHARE=/share "
        f"PYOUKI_LAPTOP_MODES='{os.environ.get('PYOUKI_LAPTOP_MODES', 'rootless rootful')}'\n"
        "python3 -u tests/laptop/guest.py /share/results.json > /share/guest.log 2>&1\n"
        "echo $? > /share/guest.rc\n")


def run_guest(log: bool = True) -> dict[str, Any]:
    """Build (or reuse) the image, boot it once, and return what tests/laptop/guest.py reported."""
    vm = _vm()
    t0 = time.monotonic()
    image = build_image(log=log)
    t_built = time.monotonic()
    with vm.share_dir() as share:
        _stage_share(share)
        serial = share / "serial.log"
        rc = vm.boot(image, share, serial, timeout=BOOT_TIMEOUT, memory_mb=MEMORY_MB)
        t_booted = time.monotonic()

        def text(name: str) -> str:
            p = share / name
            return p.read_text(errors="replace") if p.exists() else ""

        results_path = share / "results.json"
        if not results_path.exists() and (share / "results.json.partial").exists():
            results_path = share / "results.json.partial"  # the guest ran out of time: what it has
        if not results_path.exists():
            raise vm.VMError(f"the guest wrote no results (qemu status {rc}); serial console:\n"
                             f"{text('serial.log')[-3000:]}\nsetup-machine:\n{text('setup.log')[-2000:]}\n"
                             f"guest log:\n{text('guest.log')[-3000:]}\n"
                             f"rootless log:\n{text('rootless.log')[-3000:]}")
        results = json.loads(results_path.read_text())
        # the last run's report, for `laptop.py table` and for a look after a failure
        shutil.copy(results_path, vm.cache_dir() / "laptop-last-results.json")
    return {"results": results, "qemu_rc": rc, "setup_rc": text("setup.rc").strip(), "setup_log": text("setup.log"),
            "guest_log": text("guest.log")[-5000:], "serial": text("serial.log")[-3000:],
            "timings": {"build": t_built - t0, "boot_and_tests": t_booted - t_built}}


def table(results: dict[str, Any]) -> str:
    """A markdown table: each scenario, rootless and rootful, pyouki vs runc (ok, seconds)."""
    lines = ["| scenario | rootless runc | rootless pyouki | rootful runc | rootful pyouki |",
             "|---|---|---|---|---|"]
    modes = ("rootless", "rootful")
    names: list[str] = []
    for mode in modes:
        for rt in ("runc", "pyouki"):
            for name in (results.get(mode) or {}).get(rt, {}).get("scenarios", {}):
                if name not in names:
                    names.append(name)

    def cell(mode: str, rt: str, name: str) -> str:
        s = (results.get(mode) or {}).get(rt, {}).get("scenarios", {}).get(name)
        if s is None:
            return "–"
        mark = "pass" if s.get("ok") else "FAIL"
        retried = ", after a hang" if s.get("hung_first") else ""  # see the guest's step_userns_auto
        return f"{mark} ({s.get('seconds', 0):.1f} s{retried})"

    for name in names:
        lines.append(f"| {name} | " + " | ".join(cell(m, r, name) for m in modes for r in ("runc", "pyouki")) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Command-line entry: ``build [--force]``, ``run`` or ``table RESULTS.json``."""
    import argparse

    p = argparse.ArgumentParser(prog="laptop.py", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build and cache the laptop image")
    b.add_argument("--force", action="store_true")
    sub.add_parser("run", help="boot once, run the guest scenarios, print the results as JSON")
    t = sub.add_parser("table", help="print the pyouki-vs-runc table of a run's JSON")
    t.add_argument("file")
    args = p.parse_args(argv)
    if args.cmd == "build":
        print(build_image(force=args.force))
        return 0
    if args.cmd == "table":
        data = json.loads(Path(args.file).read_text())
        print(table(data.get("results", data)))
        return 0
    out = run_guest()
    print(json.dumps(out, indent=2))
    return 0 if out["results"].get("ok") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
