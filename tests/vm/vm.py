"""The enforcement tier: a qemu VM (TCG) with Debian's kernel, systemd and cgroup v2 controllers.

Usable as a library (``build_image``, ``run_guest``) and as a command for CI and Vagrant::

    python tests/vm/vm.py build      # once: the image, from the nspawn tier's cached rootfs
    python tests/vm/vm.py run        # boot once, run tests/vm/guest.py inside, print results

This host's kernel keeps memory/pids/cpu on cgroup v1, so only a separate kernel enforces
limits set through cgroup v2 (see /work/shared/SYSTEMD.md section B). The image is the nspawn
rootfs (systemd, dbus, python3 with pyouki's dependencies, the user ``tester`` with subuid
ranges and a ``Delegate=cpu cpuset io memory pids`` drop-in for ``user@.service``) plus a
kernel and a small initrd, built once and cached under ``$PYOUKI_TEST_CACHE``. Each run boots
it once with ``snapshot=on`` (the image stays clean) and a 9p share that carries pyouki's
tree, the guest script and busybox in, and the results out; a oneshot unit runs
``/share/run.sh`` after the lingering user's manager is up, then powers the VM off.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# Bump when the image set-up below changes: it is part of the cache key.
SETUP_VERSION = "2"
KERNEL_PACKAGES = ("linux-image-amd64", "initramfs-tools", "zstd")
# The guest's tools beyond the kernel (installed in the same apt run, .debs cached on the host):
# apparmor_parser loads the AppArmor tests' profile (Debian's kernel has AppArmor enabled); criu
# checkpoints and restores containers (it cannot on the host's kernel), and runs iptables-save,
# iptables-restore (network lock) and ip on the container's network namespace.
GUEST_PACKAGES = ("apparmor", "criu", "iptables")
INITRD_MODULES = ("virtio_pci", "virtio_blk", "ext4", "crc32c_generic")
IMAGE_SIZE = "3G"
TEST_USER = "tester"
TEST_UID = 1000
# A whole guest run under TCG, including the tests; qemu is killed after it. The guest parts grew
# (AppArmor, check, criu): 5-6 minutes on a quiet machine, ~11 when other VMs share the cores.
BOOT_TIMEOUT = float(os.environ.get("PYOUKI_VM_TIMEOUT") or 1260)
# Legacy hardware qemu's default machine still probes (most is gone with -nodefaults).
BLACKLIST = ("floppy", "parport", "parport_pc", "pcspkr", "bochs", "bochs_drm", "ata_piix", "pata_acpi",
             "ata_generic", "i2c_piix4", "kvm", "kvm_amd", "kvm_intel", "sr_mod", "cdrom", "joydev",
             "psmouse", "serio_raw", "drm", "drm_kms_helper")
GUEST_UNIT = """\
[Unit]
Description=pyouki VM tests (runs /share/run.sh, then powers off)
ConditionPathExists=/share/run.sh
Wants=user@{uid}.service
After=user@{uid}.service systemd-logind.service share.mount multi-user.target
RequiresMountsFor=/share
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
ExecStart=/bin/sh /share/run.sh
StandardOutput=journal+console
StandardError=journal+console
# the host's timeout (BOOT_TIMEOUT) bounds the run; a unit timeout would only cut it shorter
TimeoutStartSec=infinity
"""


class VMError(Exception):
    """The VM tier could not build, boot or read back its results."""


def _nspawn() -> Any:
    """tests/systemd/nspawn.py, which builds the rootfs this image starts from."""
    name = "pyouki_tests_nspawn"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests/systemd/nspawn.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def cache_dir() -> Path:
    """``$PYOUKI_TEST_CACHE`` or /var/cache/pyouki-tests (shared with the nspawn tier)."""
    return Path(os.environ.get("PYOUKI_TEST_CACHE", "/var/cache/pyouki-tests"))


def image_dir() -> Path:
    """The cached image (kernel, initrd, disk); its name changes with the rootfs or the set-up."""
    base = _nspawn().tarball_path().name
    text = " ".join((base, SETUP_VERSION, *KERNEL_PACKAGES, *GUEST_PACKAGES, *INITRD_MODULES, *BLACKLIST, GUEST_UNIT,
                     IMAGE_SIZE))
    return cache_dir() / f"vm-bookworm-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def apt_packages() -> list[str]:
    """Host packages this tier needs (tests/vm/APT_PACKAGES)."""
    lines = (HERE / "APT_PACKAGES").read_text().splitlines()
    return [p.strip() for p in lines if p.strip() and not p.startswith("#")]


def missing_tools() -> list[str]:
    """Host tools this tier needs that are not installed."""
    tools = ("qemu-system-x86_64", "mkfs.ext4", "unshare", "chroot", "timeout", "debootstrap", "zstd", "tar")
    return [t for t in tools if shutil.which(t) is None]


def _run(argv: list[str], timeout: float, what: str) -> subprocess.CompletedProcess[str]:
    try:
        res = subprocess.run(argv, text=True, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise VMError(f"{what} timed out after {timeout:.0f} s") from e
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-20:])
        raise VMError(f"{what} failed with status {res.returncode}:\n{tail}")
    return res


def _install_kernel(root: Path, debs: Path) -> None:
    """apt-get the kernel (and GUEST_PACKAGES) into root, in a private mount namespace (nothing
    leaks to the host).

    The .debs are kept in the cache (debs), so a rebuild after a set-up change downloads nothing.
    """
    conf = root / "etc/initramfs-tools"
    (conf / "conf.d").mkdir(parents=True, exist_ok=True)
    # A 6-7 MB initrd with only what finds the root disk, instead of 30 MB with every driver.
    (conf / "conf.d/pyouki.conf").write_text("MODULES=list\nCOMPRESS=zstd\n")
    (conf / "modules").write_text("".join(m + "\n" for m in INITRD_MODULES))
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    debs.mkdir(parents=True, exist_ok=True)
    r = str(root)
    apt = ("DEBIAN_FRONTEND=noninteractive apt-get -q -o Dpkg::Options::=--force-confold "
           "-o Dpkg::Options::=--force-confdef")
    script = (
        f"set -e; mount -t proc proc {r}/proc; mount --rbind /dev {r}/dev; "
        f"mount --bind {debs} {r}/var/cache/apt/archives; "
        f"chroot {r} sh -c '{apt} update -q >/dev/null && {apt} install -y --no-install-recommends "
        f"{' '.join(KERNEL_PACKAGES + GUEST_PACKAGES)}'"
    )
    _run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], 900, "installing the kernel")
    (root / "etc/resolv.conf").unlink()


def _configure(root: Path) -> None:
    """Boot straight to the test unit: fstab, share mount, quiet boot, linger, the unit."""
    (root / "etc/fstab").write_text(
        "/dev/vda / ext4 rw,noatime 0 1\n"
        "share /share 9p trans=virtio,version=9p2000.L,msize=524288,nofail,x-systemd.device-timeout=5s 0 0\n")
    (root / "share").mkdir(exist_ok=True)
    (root / "etc/modprobe.d/pyouki-vm.conf").write_text("".join(f"blacklist {m}\n" for m in BLACKLIST))
    masks = ("modprobe@drm.service", "serial-getty@.service", "systemd-timesyncd.service",
             "systemd-networkd.service", "networking.service", "ifupdown-pre.service",
             "systemd-hwdb-update.service", "ldconfig.service", "systemd-journal-catalog-update.service",
             # the AppArmor tests load their own profile; compiling Debian's at every boot costs TCG time
             "apparmor.service")
    for unit in masks:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    unit_file = root / "etc/systemd/system/pyouki-vmtest.service"
    unit_file.write_text(GUEST_UNIT.format(uid=TEST_UID))
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "pyouki-vmtest.service").unlink(missing_ok=True)
    (wants / "pyouki-vmtest.service").symlink_to("/etc/systemd/system/pyouki-vmtest.service")
    # Lingering: logind starts the user's manager at boot, no login needed (set offline).
    linger = root / "var/lib/systemd/linger"
    linger.mkdir(parents=True, exist_ok=True)
    (linger / TEST_USER).touch()
    # The kernel and initrd are handed to qemu directly: no bootloader in the image.
    for big in ("usr/share/doc", "usr/share/man", "usr/share/locale", "var/cache/apt/archives"):
        shutil.rmtree(root / big, ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)


def build_image(force: bool = False, log: bool = True) -> Path:
    """Build the VM image once (from the nspawn rootfs) and cache it; return its directory.

    Holds the cache's build lock, so concurrent callers build it once.
    """
    return build_guest_image(image_dir(), force=force, log=log)


def build_guest_image(dest: Path, customize: Callable[[Path], None] | None = None, *, size: str = IMAGE_SIZE,
                      label: str = "pyouki-vm", force: bool = False, log: bool = True) -> Path:
    """This tier's image recipe, for this tier and the tiers built on it (tests/laptop/): the nspawn
    rootfs, the kernel and GUEST_PACKAGES, then ``customize(root)`` (their additions, in the
    image's tree), then the boot set-up (fstab, the test unit, masks), the kernel and initrd copied
    out and ``mkfs.ext4 -d`` into ``dest/disk.img``. Cached: a ``dest`` with a disk is returned as
    it is; images beside it with the same name before its last ``-`` (older keys) are pruned.
    Holds the cache's build lock, so concurrent callers build it once.
    """
    nspawn = _nspawn()
    tarball = nspawn.build_rootfs(log=log)
    with nspawn._locked(cache_dir() / ".build.lock"):
        if (dest / "disk.img").exists() and not force:
            return dest
        bad = missing_tools()
        if bad:
            raise VMError(f"missing host tools: {', '.join(bad)} (apt-get install -y {' '.join(apt_packages())})")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="vm-build-", dir=cache_dir()) as tmp:
            root = Path(tmp) / "root"
            root.mkdir()
            _run(["tar", "--zstd", "--numeric-owner", "--xattrs", "-C", str(root), "-xf", str(tarball)], 300,
                 "extracting the rootfs")
            root.chmod(0o755)
            _install_kernel(root, cache_dir() / "apt-archives")
            if customize is not None:
                customize(root)
            _configure(root)
            out = Path(tmp) / "out"
            out.mkdir()
            kernels = sorted((root / "boot").glob("vmlinuz-*"))
            initrds = sorted((root / "boot").glob("initrd.img-*"))
            if not kernels or not initrds:
                raise VMError("the kernel install left no vmlinuz/initrd in /boot")
            shutil.copy(kernels[-1], out / "vmlinuz")
            shutil.copy(initrds[-1], out / "initrd.img")
            _run(["mkfs.ext4", "-q", "-F", "-L", label, "-E", "root_owner=0:0", "-d", str(root),
                  str(out / "disk.img"), size], 900, "mkfs.ext4 -d")
            shutil.rmtree(dest, ignore_errors=True)
            out.rename(dest)
        family = dest.name.rsplit("-", 1)[0]
        for old in dest.parent.glob(f"{family}-*"):
            if old != dest and old.name.rsplit("-", 1)[0] == family:
                shutil.rmtree(old, ignore_errors=True)
        if log:
            print(f"built {dest} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return dest


def run_checked(argv: list[str], timeout: float, what: str) -> subprocess.CompletedProcess[str]:
    """Run argv (no stdin, output captured); a failure or a timeout raises VMError naming ``what``."""
    return _run(argv, timeout, what)


def _stage_share(share: Path) -> None:
    """What the guest gets: pyouki's tree, the guest script, busybox, and run.sh."""
    src = share / "src"
    shutil.copytree(REPO / "pyouki", src / "pyouki", ignore=shutil.ignore_patterns("__pycache__"))
    (src / "tests/vm").mkdir(parents=True)
    shutil.copy(HERE / "guest.py", src / "tests/vm/guest.py")
    shutil.copy(REPO / "tests/systemd/check_driver.py", src / "tests/vm/check_driver.py")
    shutil.copy("/bin/busybox", share / "busybox")
    (share / "run.sh").write_text(
        "#!/bin/sh\n"
        "# Written by tests/vm/vm.py: run the guest tests, keep their output, results in /share.\n"
        "cd /share/src\n"
        "export PYTHONPATH=/share/src PYTHONDONTWRITEBYTECODE=1 PYOUKI_BUSYBOX=/share/busybox\n"
        # a subset of the guest's parts, to work on one (the full run needs them all)
        f"export PYOUKI_VM_PARTS={shlex.quote(os.environ.get('PYOUKI_VM_PARTS', ''))}\n"
        "python3 -u tests/vm/guest.py /share/results.json > /share/guest.log 2>&1\n"
        "echo $? > /share/guest.rc\n")


@contextlib.contextmanager
def share_dir() -> Iterator[Path]:
    """A fresh 0755 temp dir for the guest's 9p share, removed afterwards."""
    share = Path(tempfile.mkdtemp(prefix="pyouki-vm-share-"))
    share.chmod(0o755)  # the guest's test user reads pyouki's tree from it
    try:
        yield share
    finally:
        shutil.rmtree(share, ignore_errors=True)


def boot(image: Path, share: Path, serial_log: Path, timeout: float | None = None, memory_mb: int = 1024) -> int:
    """Boot the image once with share at /share; return qemu's exit status when the guest is off.

    TCG (the host's /dev/kvm cannot run a stock kernel); ``timeout`` kills a hung guest.
    """
    argv = [
        "timeout", "-k", "10", str(int(timeout or BOOT_TIMEOUT)),
        "qemu-system-x86_64", "-nodefaults", "-no-reboot", "-display", "none",
        "-accel", "tcg,thread=multi", "-cpu", "max", "-m", str(memory_mb), "-smp", "2",
        "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd.img"),
        "-append", "root=/dev/vda rw console=ttyS0 panic=-1 quiet systemd.unified_cgroup_hierarchy=1 "
                   "systemd.show_status=0 mitigations=off",
        "-drive", f"file={image / 'disk.img'},if=virtio,format=raw,cache=unsafe,snapshot=on",
        "-virtfs", f"local,path={share},mount_tag=share,security_model=none,id=share",
        "-nic", "none", "-serial", f"file:{serial_log}",
    ]
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode and proc.stderr.strip():
        with open(serial_log, "a") as f:
            f.write("\n--- qemu stderr\n" + proc.stderr)
    return proc.returncode


def run_guest(log: bool = True) -> dict[str, Any]:
    """Build (or reuse) the image, boot it once, and return what tests/vm/guest.py reported.

    The result holds ``results`` (the guest's JSON), ``timings`` and the tails of the logs.
    """
    t0 = time.monotonic()
    image = build_image(log=log)
    t_built = time.monotonic()
    with share_dir() as share:
        _stage_share(share)
        serial = share / "serial.log"
        rc = boot(image, share, serial)
        t_booted = time.monotonic()
        serial_text = serial.read_text(errors="replace") if serial.exists() else ""
        guest_log = (share / "guest.log").read_text(errors="replace") if (share / "guest.log").exists() else ""
        results_path = share / "results.json"
        if not results_path.exists():
            partial = share / "results.json.partial"
            partial_text = partial.read_text(errors="replace") if partial.exists() else "(none)"
            raise VMError(f"the guest wrote no results (qemu status {rc}); serial console:\n"
                          f"{serial_text[-3000:]}\nguest log:\n{guest_log[-3000:]}\n"
                          f"partial results:\n{partial_text[-6000:]}")
        results = json.loads(results_path.read_text())
    return {"results": results, "qemu_rc": rc, "guest_log": guest_log[-5000:], "serial": serial_text[-5000:],
            "timings": {"build": t_built - t0, "boot_and_tests": t_booted - t_built}}


def main(argv: list[str]) -> int:
    """Command-line entry: ``build [--force]`` or ``run``."""
    import argparse

    p = argparse.ArgumentParser(prog="vm.py", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build and cache the VM image")
    b.add_argument("--force", action="store_true")
    sub.add_parser("run", help="boot once, run the guest tests, print the results as JSON")
    args = p.parse_args(argv)
    if args.cmd == "build":
        print(build_image(force=args.force))
        return 0
    out = run_guest()
    print(json.dumps(out, indent=2))
    return 0 if out["results"].get("ok") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
