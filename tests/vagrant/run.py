"""Run the project's Vagrantfiles for real with vagrant-libvirt, every trace of it in a temp dir.

    python tests/vagrant/run.py Vagrantfile [Vagrantfile.root ...]   # up, then destroy; logs on stdout

Networking rule of this workplace: nothing of this tier may touch the host's network. So a
network namespace is created for the run (``ip netns add``), and libvirtd, its management
network (vagrant-libvirt's 192.168.121.0/24 bridge and dnsmasq), qemu and vagrant all live in it;
the namespace is deleted at the end. libvirtd (there is no systemd to start it) also gets a
private mount namespace with /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt and
/var/cache/libvirt bound from the temp dir, so the host's libvirt state is never touched; vagrant
reaches it through ``LIBVIRT_DEFAULT_URI`` with the socket's temp-dir path. The box is the local
stand-in built by box.py, added under the name the Vagrantfiles ask for (``debian/bookworm64``)
to a throw-away ``VAGRANT_HOME``: the project's Vagrantfiles run unchanged.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LIBVIRT_DIRS = ("/etc/libvirt", "/run/libvirt", "/var/lib/libvirt", "/var/log/libvirt", "/var/cache/libvirt")
QEMU_CONF = ('user = "root"\ngroup = "root"\nswtpm_user = "root"\nswtpm_group = "root"\n'
             'security_driver = "none"\nremember_owner = 0\nstdio_handler = "file"\n')
LIBVIRTD_CONF = 'auth_unix_rw = "none"\nunix_sock_group = "root"\n'
UP_TIMEOUT = float(os.environ.get("PYOUKI_VAGRANT_TIMEOUT") or 1500)


def _box() -> object:
    name = "pyouki_tests_vagrant_box"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "box.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def missing_tools() -> list[str]:
    """Host tools this tier needs that are not installed."""
    tools = ("vagrant", "libvirtd", "virsh", "qemu-system-x86_64", "qemu-img", "dnsmasq", "iptables", "ip",
             "rsync", "mkfs.ext4")
    missing = [t for t in tools if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    plugin = Path("/usr/share/rubygems-integration/all/gems").glob("vagrant-libvirt-*")
    if not any(plugin):
        missing.append("vagrant-libvirt")
    return missing


@dataclass
class Env:
    """A running libvirtd in its own network and mount namespaces, and vagrant's state dirs."""

    tmp: Path
    netns: str
    libvirtd_pid: int
    vagrant_home: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(self, argv: list[str], cwd: Path, timeout: float, extra: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        """argv inside the namespace with this run's vagrant/libvirt environment; output captured
        (and appended to ``$PYOUKI_VAGRANT_LOG`` as it comes, to follow a long ``up``)."""
        env = {**self.env, **(extra or {})}
        live = os.environ.get("PYOUKI_VAGRANT_LOG")
        with tempfile.TemporaryFile("w+") as out:
            log = open(live, "a") if live else out  # noqa: SIM115
            try:
                start = log.tell()
                proc = subprocess.run(["ip", "netns", "exec", self.netns, *argv], cwd=cwd, env=env, text=True,
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                      timeout=timeout)
                log.flush()
                with open(log.name if live else f"/proc/self/fd/{out.fileno()}") as f:
                    f.seek(start)
                    text = f.read()
            finally:
                if live:
                    log.close()
        # vagrant's progress meters (thousands of them while a volume uploads) say nothing
        text = re.sub(r"(\x1b\[K)?Progress: [^\r\n\x1b]*", "", text)
        return subprocess.CompletedProcess(proc.args, proc.returncode, text)

    def netns_pids(self) -> list[int]:
        """Every process still in the namespace."""
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear in {timeout:.0f} s")
        time.sleep(0.2)


@contextlib.contextmanager
def libvirt_env() -> Iterator[Env]:
    """Start libvirtd in a fresh network + mount namespace; stop it and delete everything after."""
    tmp = Path(tempfile.mkdtemp(prefix="pyouki-vagrant-"))
    netns = f"pyouki-vagrant-{os.getpid()}"
    binds = []
    for d in LIBVIRT_DIRS:
        own = tmp / "libvirt" / d.strip("/").replace("/", "-")
        own.mkdir(parents=True)
        binds.append((own, d))
    etc = tmp / "libvirt/etc-libvirt"
    (etc / "qemu.conf").write_text(QEMU_CONF)
    (etc / "libvirtd.conf").write_text(LIBVIRTD_CONF)
    # libvirtd insists that Debian's qemu user exists even when qemu.conf says root: it gets an
    # alias of root in passwd/group copies bound over the real ones, in libvirtd's namespace only.
    for name, line in (("passwd", "libvirt-qemu:x:0:0::/nonexistent:/usr/sbin/nologin\n"),
                       ("group", "libvirt-qemu:x:0:\n")):
        (tmp / name).write_text(Path("/etc", name).read_text() + line)
        binds.append((tmp / name, f"/etc/{name}"))
    pidfile = tmp / "libvirtd.pid"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    pid = 0
    try:
        subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
        script = "set -e; " + "".join(
            f"[ -e {d} ] || mkdir -p {d}; mount --bind {own} {d}; " for own, d in binds)
        script += f"exec libvirtd -d -p {pidfile} -f {etc / 'libvirtd.conf'}"
        subprocess.run(["ip", "netns", "exec", netns, "unshare", "--mount", "--propagation", "private",
                        "sh", "-c", script], check=True, timeout=60)
        _wait_for(pidfile, 30)
        pid = int(pidfile.read_text())
        sock = tmp / "libvirt/run-libvirt/libvirt-sock"
        _wait_for(sock, 30)
        home = tmp / "vagrant.d"
        home.mkdir()
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": str(tmp),
               "VAGRANT_HOME": str(home), "LIBVIRT_DEFAULT_URI": f"qemu:///system?socket={sock}",
               "VAGRANT_DEFAULT_PROVIDER": "libvirt", "VAGRANT_CHECKPOINT_DISABLE": "1",
               "VAGRANT_NO_PARALLEL": "1", "LANG": "C.UTF-8"}
        yield Env(tmp, netns, pid, home, env)
    finally:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
        # Anything left in the namespace (a qemu or dnsmasq the run leaked) dies with it.
        out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout
        for p in out.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(p), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", netns], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def add_box(env: Env) -> None:
    """``vagrant box add`` the local box file under the name the Vagrantfiles use."""
    box = _box()
    path = box.build_box()  # type: ignore[attr-defined]
    res = env.run(["vagrant", "box", "add", "--name", box.BOX_NAME, "--provider", "libvirt",  # type: ignore[attr-defined]
                   str(path)], cwd=env.tmp, timeout=600)
    if res.returncode:
        raise RuntimeError(f"vagrant box add failed:\n{res.stdout[-3000:]}")


@dataclass
class Result:
    """What one Vagrantfile's up and destroy did."""

    vagrantfile: str
    up_rc: int
    up_log: str
    destroy_rc: int = -1
    destroy_log: str = ""
    left: list[str] = field(default_factory=list)
    seconds_up: float = 0.0


def _processes(env: Env) -> list[str]:
    """qemu, dnsmasq or anything but libvirtd still in the namespace."""
    left = []
    for p in env.netns_pids():
        if p == env.libvirtd_pid:
            continue
        with contextlib.suppress(OSError):
            left.append(Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
    return left


def up_and_destroy(env: Env, vagrantfile: str) -> Result:
    """``vagrant up`` the project's Vagrantfile (a copy of the tree: vagrant writes .vagrant/), then
    ``vagrant destroy -f``; report the logs and what was left running."""
    work = env.tmp / f"tree-{vagrantfile}"
    subprocess.run(["rsync", "-a", "--exclude=/.git/", "--exclude=/.vagrant/", "--exclude=__pycache__/",
                    "--exclude=/.mypy_cache/", "--exclude=/.ruff_cache/", "--exclude=/.pytest_cache/",
                    "--exclude=/.launcher/", f"{REPO}/", f"{work}/"], check=True)
    extra = {"VAGRANT_VAGRANTFILE": vagrantfile, "VAGRANT_DOTFILE_PATH": str(env.tmp / f"dot-{vagrantfile}")}
    t0 = time.monotonic()
    try:
        up = env.run(["vagrant", "up", "--provider", "libvirt"], cwd=work, timeout=UP_TIMEOUT, extra=extra)
        res = Result(vagrantfile, up.returncode, up.stdout, seconds_up=time.monotonic() - t0)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        res = Result(vagrantfile, -9, out + f"\n(vagrant up timed out after {UP_TIMEOUT:.0f} s)",
                     seconds_up=time.monotonic() - t0)
    down = env.run(["vagrant", "destroy", "-f"], cwd=work, timeout=300, extra=extra)
    res.destroy_rc, res.destroy_log = down.returncode, down.stdout
    time.sleep(1)
    res.left = _processes(env)
    return res


def main(argv: list[str]) -> int:
    """Command-line entry: up and destroy each Vagrantfile named, print the logs."""
    files = argv or ["Vagrantfile", "Vagrantfile.root"]
    rc = 0
    with libvirt_env() as env:
        add_box(env)
        for f in files:
            r = up_and_destroy(env, f)
            print(f"=== {f}: up rc={r.up_rc} in {r.seconds_up:.0f} s, destroy rc={r.destroy_rc}, left={r.left}")
            print(r.up_log)
            print(r.destroy_log)
            rc |= bool(r.up_rc or r.destroy_rc or r.left)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
