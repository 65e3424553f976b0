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

Both Vagrantfiles come up at once (``up_all``), each in a thread: the second ``vagrant up``
starts when the first has uploaded the box volume and created the management network (its log
says ``Starting domain.``), as vagrant-libvirt guards those only within one process. After the
provisioners (setup-machine, the demo), a subset of the project's test suite runs inside each VM
(``SUITE``: lifecycle and exec tests, the rootless half in Vagrantfile's VM, the rootful half in
Vagrantfile.root's), then ``vagrant destroy -f``.
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
import threading
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
# One `vagrant up` (boot under TCG, setup-machine, the demo); generous: a loaded machine runs TCG
# guests several times slower. The tests inside and destroy have their own bounds.
UP_TIMEOUT = float(os.environ.get("PYOUKI_VAGRANT_TIMEOUT") or 1800)
SUITE_TIMEOUT = 900.0
# The part of the test suite each VM runs (`vagrant ssh`, as root, from the synced tree): the whole
# suite under TCG would take hours. Lifecycle (create/start/state/kill/delete, run's exit status
# and signals, kill --all) and exec (status, flags, a pty), in the mode the Vagrantfile demonstrates.
SUITE_TESTS = ("tests/test_lifecycle.py", "tests/test_exec.py")
SUITE_K = ("create_start_state_kill_delete or run_prints_output or delete_force_running or run_returns_137 "
           "or kill_all or exec_runs_in_the_container or exec_flags_env_cwd_user or exec_tty_under_a_pty")
SUITE_MODE = {"Vagrantfile": "rootless", "Vagrantfile.root": "root and not rootless"}
REPO_IN_VM = "/home/vagrant/pyouki"
# Lines of `vagrant up` whose time is recorded (where an up's time goes).
MARKS = ("Starting domain.", "Machine booted and ready!", "Rsyncing folder", "Running provisioner: setup",
         "Running provisioner: demo", "demo: ok")


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
        return subprocess.CompletedProcess(proc.args, proc.returncode, _clean(text))

    def start(self, argv: list[str], cwd: Path, log: Path, extra: dict[str, str] | None = None,
              ) -> subprocess.Popen[bytes]:
        """argv inside the namespace, in the background, its output to ``log``."""
        with open(log, "ab") as out:
            return subprocess.Popen(["ip", "netns", "exec", self.netns, *argv], cwd=cwd,
                                    env={**self.env, **(extra or {})}, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)

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
    suite_rc: int = -1
    suite_log: str = ""
    seconds_suite: float = 0.0
    seconds: float = 0.0
    marks: dict[str, float] = field(default_factory=dict)  # seconds into `up` each MARKS line came


def _processes(env: Env) -> list[str]:
    """qemu, dnsmasq or anything but libvirtd still in the namespace."""
    left = []
    for p in env.netns_pids():
        if p == env.libvirtd_pid:
            continue
        with contextlib.suppress(OSError):
            left.append(Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
    return left


def _clean(text: str) -> str:
    # vagrant's progress meters (thousands of them while a volume uploads) say nothing
    return re.sub(r"(\x1b\[K)?Progress: [^\r\n\x1b]*", "", text)


def suite_command(vagrantfile: str) -> str:
    """The shell command `vagrant ssh -c` runs: the subset of the test suite for this VM."""
    k = f"({SUITE_K}) and {SUITE_MODE.get(vagrantfile, 'root')}"
    return (f"cd {REPO_IN_VM} && sudo /opt/pyouki/venv/bin/python -m pytest -q -p no:cacheprovider "
            f"{' '.join(SUITE_TESTS)} -k '{k}'")


def up_and_destroy(env: Env, vagrantfile: str, wait_for: threading.Event | None = None,
                   domain_started: threading.Event | None = None) -> Result:
    """``vagrant up`` the project's Vagrantfile (a copy of the tree: vagrant writes .vagrant/), run
    the test subset inside, then ``vagrant destroy -f``; report the logs and what was left running.

    ``wait_for``: start ``up`` only once it is set (or after UP_TIMEOUT); ``domain_started``: set
    when this ``up`` has started its domain (the box volume and the network exist) or ended.
    """
    t0 = time.monotonic()
    work = env.tmp / f"tree-{vagrantfile}"
    subprocess.run(["rsync", "-a", "--exclude=/.git/", "--exclude=/.vagrant/", "--exclude=__pycache__/",
                    "--exclude=/.mypy_cache/", "--exclude=/.ruff_cache/", "--exclude=/.pytest_cache/",
                    "--exclude=/.launcher/", f"{REPO}/", f"{work}/"], check=True)
    extra = {"VAGRANT_VAGRANTFILE": vagrantfile, "VAGRANT_DOTFILE_PATH": str(env.tmp / f"dot-{vagrantfile}")}
    if wait_for is not None:
        wait_for.wait(UP_TIMEOUT)
    log = env.tmp / f"up-{vagrantfile}.log"
    t_up = time.monotonic()
    proc = env.start(["vagrant", "up", "--provider", "libvirt"], cwd=work, log=log, extra=extra)
    deadline = t_up + UP_TIMEOUT
    marks: dict[str, float] = {}
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            text = log.read_bytes()
            for mark in MARKS:
                if mark not in marks and mark.encode() in text:
                    marks[mark] = round(time.monotonic() - t_up, 1)
            if domain_started is not None and "Starting domain." in marks:
                domain_started.set()
            time.sleep(1)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            up_rc = -9
        else:
            up_rc = proc.returncode
    finally:
        if domain_started is not None:
            domain_started.set()
    text = _clean(log.read_text(errors="replace"))
    if up_rc == -9:
        text += f"\n(vagrant up timed out after {UP_TIMEOUT:.0f} s)"
    res = Result(vagrantfile, up_rc, text, seconds_up=time.monotonic() - t_up, marks=marks)
    if up_rc == 0:
        t_suite = time.monotonic()
        try:
            suite = env.run(["vagrant", "ssh", "-c", suite_command(vagrantfile)], cwd=work, timeout=SUITE_TIMEOUT,
                            extra=extra)
            res.suite_rc, res.suite_log = suite.returncode, suite.stdout
        except subprocess.TimeoutExpired:
            res.suite_rc, res.suite_log = -9, f"(the test suite timed out after {SUITE_TIMEOUT:.0f} s)"
        res.seconds_suite = time.monotonic() - t_suite
    down = env.run(["vagrant", "destroy", "-f"], cwd=work, timeout=600, extra=extra)
    res.destroy_rc, res.destroy_log = down.returncode, down.stdout
    res.seconds = time.monotonic() - t0
    return res


def up_all(env: Env, vagrantfiles: list[str]) -> list[Result]:
    """Each Vagrantfile's up, tests and destroy at once, in threads; the next ``up`` starts when the
    previous one has started its domain. Then what was left running (after every destroy)."""
    results: list[Result | None] = [None] * len(vagrantfiles)
    events = [threading.Event() for _ in vagrantfiles]

    def one(i: int, vagrantfile: str) -> None:
        try:
            results[i] = up_and_destroy(env, vagrantfile, events[i - 1] if i else None, events[i])
        except Exception as e:  # reported as a failed up, with the reason
            events[i].set()
            results[i] = Result(vagrantfile, -1, f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=one, args=(i, f), daemon=True) for i, f in enumerate(vagrantfiles)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(1)
    left = _processes(env)
    out = []
    for r in results:
        assert r is not None
        r.left = left
        out.append(r)
    return out


def main(argv: list[str]) -> int:
    """Command-line entry: up, test and destroy each Vagrantfile named (at once), print the logs."""
    files = argv or ["Vagrantfile", "Vagrantfile.root"]
    rc = 0
    with libvirt_env() as env:
        t0 = time.monotonic()
        add_box(env)
        print(f"=== box add in {time.monotonic() - t0:.0f} s")
        for r in up_all(env, files):
            print(f"=== {r.vagrantfile}: up rc={r.up_rc} in {r.seconds_up:.0f} s, suite rc={r.suite_rc} in "
                  f"{r.seconds_suite:.0f} s, destroy rc={r.destroy_rc}, all {r.seconds:.0f} s, left={r.left}, "
                  f"marks={r.marks}")
            print(r.up_log)
            print(r.suite_log)
            print(r.destroy_log)
            rc |= bool(r.up_rc or r.suite_rc or r.destroy_rc or r.left)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
