"""A local libvirt Vagrant box that stands in for ``debian/bookworm64`` (no box registry here).

    python tests/vagrant/box.py build     # the box file, cached: $PYOUKI_TEST_CACHE/vagrant-box-KEY/

The box is a layer of its own over what the qemu tier (tests/vm/vm.py) starts from: the nspawn
tier's rootfs plus Debian's stock kernel, and, for Vagrant, sshd, sudo, rsync and the user
``vagrant`` (the insecure key, passwordless sudo), plus everything ``scripts/setup-machine``
installs (its package lists are read from the script) and pip wheels for pyouki's extras, since
the guest has no network to package registries: setup-machine finds its packages installed and
pip finds its wheels through /etc/pip.conf (``no-index``, ``find-links``). The qemu tier's image
and cache key are untouched.

The box's own Vagrantfile (merged under the project's) makes libvirt use TCG (``qemu`` domain
type) and boot the kernel directly (the image has no bootloader).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# Bump when the set-up below changes: it is part of the cache key.
SETUP_VERSION = "4"
BOX_NAME = "debian/bookworm64"
# What Vagrant needs in the guest, beyond setup-machine's packages.
VAGRANT_PACKAGES = ("openssh-server", "sudo", "rsync", "ifupdown", "isc-dhcp-client")
WHEELS_FOR = ("pip", "setuptools>=61", "wheel")  # plus pyproject's extras, read at build time
IMAGE_SIZE = "8G"
# scripts/setup-machine's venv, made in the box with every dependency of pyouki[dev,wasm] already
# installed: the provisioner's pip then only installs pyouki itself (minutes less under TCG). A
# user's public box has no venv and setup-machine makes it; the result is the same.
VENV = "/opt/pyouki/venv"
INSECURE_KEY = Path("/usr/share/rubygems-integration/all/gems/vagrant-2.3.4/keys/vagrant.pub")

BOX_VAGRANTFILE = """\
# Written by pyouki's tests/vagrant/box.py: a local stand-in for debian/bookworm64 (TCG, direct
# kernel boot from the box's own kernel and initrd).
Vagrant.configure("2") do |config|
  config.vm.provider "libvirt" do |lv|
    lv.driver = "qemu"
    lv.cpu_mode = "custom"
    lv.cpu_model = "qemu64"
    lv.kernel = File.join(File.dirname(__FILE__), "vmlinuz")
    lv.initrd = File.join(File.dirname(__FILE__), "initrd.img")
    lv.cmd_line = "root=/dev/vda rw console=ttyS0 quiet systemd.unified_cgroup_hierarchy=1 net.ifnames=0"
    lv.disk_bus = "virtio"
    lv.graphics_type = "none"
    lv.video_type = "none"
  end
  config.vm.boot_timeout = 600
end
"""


def _vm() -> Any:
    """tests/vm/vm.py (the kernel set-up and the nspawn rootfs come from there)."""
    name = "pyouki_tests_vm"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests/vm/vm.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def setup_machine_packages() -> list[str]:
    """The Debian packages scripts/setup-machine installs (its three arrays), read from the script."""
    text = (REPO / "scripts/setup-machine").read_text()
    pkgs: list[str] = []
    for name in ("CORE_PACKAGES", "ENGINE_PACKAGES", "NO_RECOMMENDS_PACKAGES"):
        m = re.search(rf"^{name}=\((.*?)^\)", text, re.S | re.M)
        if not m:
            raise RuntimeError(f"scripts/setup-machine: no {name}=( ... ) array")
        for line in m.group(1).splitlines():
            pkgs += line.split("#", 1)[0].split()
    return pkgs


def pip_requirements() -> list[str]:
    """What pip needs offline to install pyouki[dev,wasm]: the build backend and the extras."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    reqs = list(WHEELS_FOR) + list(project["build-system"]["requires"])
    reqs += list(project["project"].get("dependencies", []))
    for extra in ("dev", "wasm"):
        reqs += project["project"]["optional-dependencies"][extra]
    return sorted(set(reqs))


def box_dir() -> Path:
    """The cached image; the name changes with the qemu tier's rootfs/kernel inputs and this set-up
    (the box file in it is packed again, cheaply, when only BOX_VAGRANTFILE changes)."""
    vm = _vm()
    text = " ".join((vm._nspawn().tarball_path().name, SETUP_VERSION, *vm.KERNEL_PACKAGES, *VAGRANT_PACKAGES,
                     *setup_machine_packages(), *pip_requirements(), IMAGE_SIZE))
    return vm.cache_dir() / f"vagrant-box-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _run(argv: list[str], timeout: float, what: str) -> None:
    _vm().run_checked(argv, timeout, what)


def _install(root: Path, debs: Path) -> None:
    """apt-get the kernel, Vagrant's needs and setup-machine's packages into root (private mounts)."""
    conf = root / "etc/initramfs-tools"
    (conf / "conf.d").mkdir(parents=True, exist_ok=True)
    (conf / "conf.d/pyouki.conf").write_text("MODULES=list\nCOMPRESS=zstd\n")
    (conf / "modules").write_text("".join(m + "\n" for m in (*_vm().INITRD_MODULES, "virtio_net")))
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    # No service starts in the chroot.
    (root / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
    (root / "usr/sbin/policy-rc.d").chmod(0o755)
    debs.mkdir(parents=True, exist_ok=True)
    r = str(root)
    apt = ("DEBIAN_FRONTEND=noninteractive apt-get -q -o Dpkg::Options::=--force-confold "
           "-o Dpkg::Options::=--force-confdef")
    pkgs = setup_machine_packages()
    core = [p for p in pkgs if p not in ("podman", "conmon", "containerd", "slirp4netns", "fuse-overlayfs",
                                          "catatonit", "bsdutils")]
    norec = [p for p in pkgs if p not in core]
    script = (
        f"set -e; mount -t proc proc {r}/proc; mount --rbind /dev {r}/dev; "
        f"mount --bind {debs} {r}/var/cache/apt/archives; "
        f"chroot {r} sh -c '{apt} update -q >/dev/null && "
        f"{apt} install -y --no-install-recommends {' '.join((*_vm().KERNEL_PACKAGES, *VAGRANT_PACKAGES))} && "
        f"{apt} install -y {' '.join(core)} && {apt} install -y --no-install-recommends {' '.join(norec)}'"
    )
    _run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], 1800, "installing the box packages")
    (root / "etc/resolv.conf").unlink()
    (root / "usr/sbin/policy-rc.d").unlink()


def _configure(root: Path, wheels: Path) -> None:
    """Vagrant's user and sshd, DHCP on eth0, offline pip, and a quiet boot."""
    (root / "etc/fstab").write_text("/dev/vda / ext4 rw,noatime 0 1\n")
    (root / "etc/hostname").write_text("bookworm\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 bookworm\n")
    (root / "etc/network/interfaces").write_text(
        "auto lo\niface lo inet loopback\nauto eth0\niface eth0 inet dhcp\n")
    (root / "etc/modprobe.d/pyouki-vm.conf").write_text("".join(f"blacklist {m}\n" for m in _vm().BLACKLIST))
    for unit in ("serial-getty@.service", "systemd-timesyncd.service", "apparmor.service",
                 "systemd-hwdb-update.service", "containerd.service", "podman.service", "podman.socket"):
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # sshd: no DNS lookups of the client (there is no DNS), keys made at build time
    (root / "etc/ssh/sshd_config.d").mkdir(exist_ok=True)
    (root / "etc/ssh/sshd_config.d/vagrant.conf").write_text("UseDNS no\nGSSAPIAuthentication no\n")
    script = (
        "set -e; id vagrant >/dev/null 2>&1 || useradd -m -s /bin/bash -G sudo vagrant; "
        "echo vagrant:vagrant | chpasswd; install -d -m 700 -o vagrant -g vagrant /home/vagrant/.ssh; "
        "systemctl enable ssh.service networking.service >/dev/null 2>&1 || true"
    )
    _run(["chroot", str(root), "sh", "-c", script], 120, "adding the vagrant user")
    keys = root / "home/vagrant/.ssh/authorized_keys"
    keys.write_text(INSECURE_KEY.read_text())
    keys.chmod(0o600)
    uid = int(subprocess.run(["chroot", str(root), "id", "-u", "vagrant"], capture_output=True, text=True,
                             check=True).stdout)
    shutil.chown(keys, uid, uid)
    (root / "etc/sudoers.d/vagrant").write_text("vagrant ALL=(ALL) NOPASSWD: ALL\nDefaults:vagrant !requiretty\n")
    (root / "etc/sudoers.d/vagrant").chmod(0o440)
    shutil.copytree(wheels, root / "var/cache/pyouki-wheels", dirs_exist_ok=True)
    (root / "etc/pip.conf").write_text(
        "# The box has no network to PyPI: pip installs from the wheels pre-fetched on the host.\n"
        "[global]\nno-index = true\nfind-links = /var/cache/pyouki-wheels\n"
        # the venv already has the build backend (_preinstall_venv): no isolated build env to make
        # under TCG. pip reads a --no-X flag's value as its option's, so `false` turns isolation off.
        "[install]\nno-build-isolation = false\n")
    for big in ("usr/share/doc", "usr/share/man", "usr/share/locale", "var/cache/apt/archives"):
        shutil.rmtree(root / big, ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)


def _preinstall_venv(root: Path) -> None:
    """setup-machine's venv with pyouki's dependencies from the box's wheels (pyouki itself is not
    in it: the provisioner installs it from the synced tree, which is what it tests).

    In the chroot with a throw-away /dev (never the host's) in a private mount namespace.
    """
    r = str(root)
    reqs = shlex.join(pip_requirements())
    inner = (f"python3 -m venv {VENV} && {VENV}/bin/python -m pip install -q --disable-pip-version-check "
             f"--no-index --find-links /var/cache/pyouki-wheels {reqs}")
    script = (
        f"set -e; mount -t proc proc {r}/proc; mount -t tmpfs -o mode=0755 box-dev {r}/dev; "
        f"mknod -m 666 {r}/dev/null c 1 3; mknod -m 666 {r}/dev/urandom c 1 9; "
        f"mknod -m 666 {r}/dev/random c 1 8; ln -s /proc/self/fd {r}/dev/fd; "
        f"chroot {r} sh -c {shlex.quote(inner)}"
    )
    _run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], 900,
         "pre-installing the venv's dependencies")


def _fetch_wheels(dest: Path) -> None:
    """Wheels of pyouki's build backend, dependencies and extras, for the host's python3 (the guest's
    is the same Debian python): ``pip wheel`` builds those PyPI has only as sources (python-prctl)
    here, so the guest compiles nothing under TCG."""
    dest.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "-w", str(dest),
          *pip_requirements()], 900, "pip wheel")


def build_image(force: bool = False, log: bool = True) -> Path:
    """Build the box's disk (box.img, qcow2) and its vmlinuz and initrd.img once; return their directory."""
    vm = _vm()
    nspawn = vm._nspawn()
    # The nspawn build lock is held for minutes by other tiers' image builds: take it only to build.
    tarball = nspawn.tarball_path()
    if not tarball.exists():
        tarball = nspawn.build_rootfs(log=log)
    dest = box_dir()
    with nspawn._locked(vm.cache_dir() / ".vagrant-box.lock"):
        if (dest / "box.img").exists() and not force:
            return dest
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="vagrant-box-build-", dir=vm.cache_dir()) as tmp:
            root = Path(tmp) / "root"
            root.mkdir()
            _run(["tar", "--zstd", "--numeric-owner", "--xattrs", "-C", str(root), "-xf", str(tarball)], 300,
                 "extracting the rootfs")
            root.chmod(0o755)
            wheels = vm.cache_dir() / "vagrant-wheels"
            _fetch_wheels(wheels)
            # A .deb cache of its own (apt locks it for the whole install, other tiers' builds too),
            # seeded with hard links to the shared one's .debs
            debs = vm.cache_dir() / "vagrant-apt-archives"
            debs.mkdir(exist_ok=True)
            for deb in (vm.cache_dir() / "apt-archives").glob("*.deb"):
                if not (debs / deb.name).exists():
                    with contextlib.suppress(OSError):
                        os.link(deb, debs / deb.name)
            _install(root, debs)
            _configure(root, wheels)
            _preinstall_venv(root)
            out = Path(tmp) / "out"
            out.mkdir()
            kernels = sorted((root / "boot").glob("vmlinuz-*"))
            initrds = sorted((root / "boot").glob("initrd.img-*"))
            if not kernels or not initrds:
                raise RuntimeError("the kernel install left no vmlinuz/initrd in /boot")
            shutil.copy(kernels[-1], out / "vmlinuz")
            shutil.copy(initrds[-1], out / "initrd.img")
            raw = Path(tmp) / "disk.raw"
            _run(["mkfs.ext4", "-q", "-F", "-L", "pyouki-box", "-E", "root_owner=0:0", "-d", str(root), str(raw),
                  IMAGE_SIZE], 900, "mkfs.ext4 -d")
            shutil.rmtree(root)
            _run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(out / "box.img")], 900, "qemu-img convert")
            raw.unlink()
            shutil.rmtree(dest, ignore_errors=True)
            out.rename(dest)
        for old in vm.cache_dir().glob("vagrant-box-*"):
            if old != dest and not old.name.startswith("vagrant-box-build-"):
                shutil.rmtree(old, ignore_errors=True)
        if log:
            print(f"built {dest} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return dest


def build_box(force: bool = False, log: bool = True) -> Path:
    """The box file (a tar of metadata.json, the box's Vagrantfile, box.img, vmlinuz, initrd.img)
    for ``vagrant box add``; built once per image and box Vagrantfile, and cached."""
    image = build_image(force=force, log=log)
    key = hashlib.sha256(BOX_VAGRANTFILE.encode()).hexdigest()[:8]
    box = image / f"pyouki-bookworm64-{key}.box"
    if box.exists():
        return box
    for old in image.glob("*.box"):
        old.unlink()
    (image / "metadata.json").write_text(json.dumps(
        {"provider": "libvirt", "format": "qcow2", "virtual_size": int(IMAGE_SIZE[:-1])}) + "\n")
    (image / "Vagrantfile").write_text(BOX_VAGRANTFILE)
    # uncompressed: the qcow2 image is dense already, and box add unpacks it again
    _run(["tar", "-C", str(image), "-cf", f"{box}.tmp", "metadata.json", "Vagrantfile", "box.img", "vmlinuz",
          "initrd.img"], 600, "packing the box")
    Path(f"{box}.tmp").rename(box)
    return box


if __name__ == "__main__":
    if sys.argv[1:2] != ["build"]:
        sys.exit("usage: box.py build [--force]")
    print(build_box(force="--force" in sys.argv))
