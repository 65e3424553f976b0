"""Inside the laptop VM: podman scenarios with runc and pyouki, rootless and rootful (no pytest).

    python3 tests/laptop/guest.py RESULTS.json     # as root (the VM's test unit): both modes
    python3 tests/laptop/guest.py --mode rootless  # one mode, JSON on stdout

``rootless`` runs as the lingering user ``tester`` through a PAM login (podman's default
systemd cgroup manager on the delegated user manager), ``rootful`` as root (the system manager;
podman applies its AppArmor profile). Each runtime is handed to podman as a small wrapper named
like it that logs every call with its duration, so the results show where time goes. Every
scenario reports ``ok`` with what it saw; tests/test_laptop_podman.py asserts on the JSON.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEST_UID = 1000
IMAGE = "localhost/bb"
RUNTIMES = {"runc": "/usr/bin/runc", "pyouki": "/usr/local/bin/pyouki"}
SHARE = Path(os.environ.get("LAPTOP_SHARE", "/share"))
WRAPPER = """#!/bin/sh
# podman's runtime: log the call and how long it took, then hand over to the real one
t0=$(date +%s.%N)
{real} "$@"
rc=$?
echo "$t0 $(date +%s.%N) $rc $*" >> {log}
exit $rc
"""


def _progress(msg: str) -> None:
    print(f"[{time.monotonic():.1f}] {msg}", file=sys.stderr, flush=True)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


class Mode:
    """podman as one user with one runtime; each scenario returns its facts and ``ok``."""

    def __init__(self, mode: str, runtime: str, base: Path) -> None:
        self.mode = mode
        self.runtime = runtime
        self.rootless = mode == "rootless"
        wrap_dir = base / "wrap" / runtime
        wrap_dir.mkdir(parents=True)
        self.calls_log = base / f"calls-{runtime}.log"
        self.wrapper = wrap_dir / runtime  # podman names the runtime after the file
        self.wrapper.write_text(WRAPPER.format(real=RUNTIMES[runtime], log=self.calls_log))
        self.wrapper.chmod(0o755)

    def pm(self, *args: str, timeout: float = 120) -> dict[str, Any]:
        """Run podman with this runtime; return rc, stdout, stderr, seconds."""
        return self.raw(["podman", "--runtime", str(self.wrapper), *args], timeout)

    def raw(self, argv: list[str], timeout: float = 120) -> dict[str, Any]:
        t0 = time.monotonic()
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
            rc, out, err = res.returncode, res.stdout.strip(), res.stderr.strip()
        except subprocess.TimeoutExpired as e:
            rc, out, err = -1, str(e.stdout or ""), f"timed out after {timeout} s"
        return {"argv": " ".join(argv[3:] if argv[:1] == ["podman"] else argv), "rc": rc, "out": out[-2000:],
                "err": err[-2000:], "s": round(time.monotonic() - t0, 2)}

    # -- scenarios -----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        r = self.pm("run", "--rm", IMAGE, "echo", "hello")
        return {"ok": r["rc"] == 0 and r["out"] == "hello", "cmd": r}

    def apparmor(self) -> dict[str, Any]:
        r = self.pm("run", "--rm", IMAGE, "cat", "/proc/self/attr/current")
        return {"ok": r["rc"] == 0, "label": r["out"], "cmd": r}

    def sleeper(self) -> dict[str, Any]:
        r = self.pm("run", "-d", "--name", "c1", IMAGE, "sleep", "1000")
        return {"ok": r["rc"] == 0, "cmd": r}

    def exec(self) -> dict[str, Any]:
        r = self.pm("exec", "c1", "echo", "hi")
        return {"ok": r["rc"] == 0 and r["out"] == "hi", "cmd": r}

    def exec_it(self) -> dict[str, Any]:
        # a real terminal for podman: script(1) gives it a pty
        inner = f"podman --runtime {self.wrapper} exec -it c1 sh -c 'tty; echo done'"
        r = self.raw(["script", "-qec", inner, "/dev/null"])
        return {"ok": r["rc"] == 0 and "/dev/pts/" in r["out"] and "done" in r["out"], "cmd": r}

    def exec_detach(self) -> dict[str, Any]:
        r = self.pm("exec", "-d", "c1", "sleep", "77")
        ps = self.pm("exec", "c1", "ps", "-o", "args")
        return {"ok": r["rc"] == 0 and "sleep 77" in ps["out"], "cmd": r, "ps": ps}

    def exec_user(self) -> dict[str, Any]:
        r = self.pm("exec", "--user", "1000:1000", "c1", "id")
        return {"ok": r["rc"] == 0 and r["out"].startswith("uid=1000(user) gid=1000(user)"), "cmd": r}

    def exec_apparmor(self) -> dict[str, Any]:
        r = self.pm("exec", "c1", "cat", "/proc/self/attr/current")
        init = self.raw(["podman", "inspect", "-f", "{{.State.Pid}}", "c1"])
        label = _read(f"/proc/{init['out']}/attr/current") if init["out"].isdigit() else None
        return {"ok": r["rc"] == 0, "label": r["out"], "init_label": label, "cmd": r}

    def top(self) -> dict[str, Any]:
        r = self.pm("top", "c1")
        return {"ok": r["rc"] == 0 and "sleep 1000" in r["out"], "cmd": r}

    def ps(self) -> dict[str, Any]:
        r = self.pm("ps", "--filter", "name=c1", "--format", "{{.Names}} {{.Status}}")
        return {"ok": r["rc"] == 0 and r["out"].startswith("c1 Up"), "cmd": r}

    def stats(self) -> dict[str, Any]:
        r = self.pm("stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}} {{.PIDs}}", "c1")
        return {"ok": r["rc"] == 0 and r["out"].startswith("c1 "), "cmd": r}

    def update(self) -> dict[str, Any]:
        # podman 4.3's update has the cpu, memory and blkio flags (no --pids-limit yet)
        r = self.pm("update", "--memory", "64m", "--cpu-quota", "50000", "c1")
        after = self.pm("exec", "c1", "cat", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/cpu.max")
        ok = r["rc"] == 0 and after["out"].split() == [str(64 << 20), "50000", "100000"]
        return {"ok": ok, "cmd": r, "after": after}

    def pause(self) -> dict[str, Any]:
        p = self.pm("pause", "c1")
        paused = self.pm("inspect", "-f", "{{.State.Status}}", "c1")
        u = self.pm("unpause", "c1")
        running = self.pm("inspect", "-f", "{{.State.Status}}", "c1")
        alive = self.pm("exec", "c1", "true")
        ok = p["rc"] == 0 and paused["out"] == "paused" and u["rc"] == 0 and running["out"] == "running"
        return {"ok": ok and alive["rc"] == 0, "pause": p, "paused": paused, "unpause": u, "running": running,
                "exec_after": alive}

    def stop(self) -> dict[str, Any]:
        r = self.pm("stop", "-t", "3", "c1")
        status = self.pm("inspect", "-f", "{{.State.Status}}", "c1")
        self.pm("rm", "-f", "c1")
        return {"ok": r["rc"] == 0 and status["out"] == "exited", "stop_seconds": r["s"], "cmd": r,
                "status": status}

    def kill_paused(self) -> dict[str, Any]:
        start = self.pm("run", "-d", "--name", "c2", IMAGE, "sleep", "1000")
        p = self.pm("pause", "c2")
        k = self.pm("kill", "c2")
        w = self.pm("wait", "c2", timeout=60)
        status = self.pm("inspect", "-f", "{{.State.Status}}", "c2")
        self.pm("rm", "-f", "c2")
        ok = start["rc"] == 0 and p["rc"] == 0 and k["rc"] == 0 and w["rc"] == 0 and status["out"] == "exited"
        return {"ok": ok, "pause": p, "kill": k, "wait": w, "status": status}

    def device(self) -> dict[str, Any]:
        r = self.pm("run", "--rm", "--device", "/dev/zero:/dev/myzero", IMAGE, "sh", "-c",
                    "head -c 5 /dev/myzero | wc -c")
        return {"ok": r["rc"] == 0 and r["out"] == "5", "cmd": r}

    def mknod(self) -> dict[str, Any]:
        # runc's default rules allow mknod of any node (c *:* m, b *:* m); opening stays restricted
        script = ("mknod /tmp/null c 1 3 && mknod /tmp/misc c 10 200 && mknod /tmp/loop b 7 0 && echo made && "
                  "(head -c1 /tmp/loop 2>/dev/null && echo opened || echo denied)")
        r = self.pm("run", "--rm", "--cap-add", "MKNOD", IMAGE, "sh", "-c", script)
        return {"ok": r["rc"] == 0 and r["out"].splitlines()[:1] == ["made"], "cmd": r}

    def ports(self) -> dict[str, Any]:
        start = self.pm("run", "-d", "--name", "web", "-p", "127.0.0.1:18080:80", IMAGE, "httpd", "-f", "-p", "80",
                        "-h", "/var/www")
        got: dict[str, Any] = {}
        deadline = time.monotonic() + 20
        while start["rc"] == 0 and time.monotonic() < deadline:
            # (busybox-static's wget crashes in this guest: python's urllib instead)
            fetch = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:18080/', timeout=3).read().decode())"
            got = self.raw([sys.executable, "-c", fetch], 10)
            if got["rc"] == 0:
                break
            time.sleep(0.5)
        self.pm("rm", "-f", "-t", "0", "web")
        return {"ok": got.get("out") == "hello from the laptop tier", "start": start, "wget": got}

    def keep_id(self) -> dict[str, Any]:
        r = self.pm("run", "--rm", "--userns=keep-id", IMAGE, "id", "-u")
        return {"ok": r["rc"] == 0 and r["out"] == str(TEST_UID), "cmd": r}

    def userns_auto(self) -> dict[str, Any]:
        r = self.pm("run", "--rm", "--userns=auto", IMAGE, "cat", "/proc/self/uid_map")
        fields = r["out"].split()
        return {"ok": r["rc"] == 0 and len(fields) == 3 and fields[0] == "0" and fields[1] != "0", "cmd": r}

    def pod(self) -> dict[str, Any]:
        create = self.pm("pod", "create", "--name", "p1")
        run = self.pm("run", "-d", "--pod", "p1", "--name", "p1c", IMAGE, "sleep", "1000")
        ps = self.pm("pod", "ps", "--filter", "name=p1", "--format", "{{.Name}} {{.Status}} {{.NumberOfContainers}}")
        ex = self.pm("exec", "p1c", "echo", "in-pod")
        rm = self.pm("pod", "rm", "-f", "-t", "0", "p1")
        ok = (create["rc"] == 0 and run["rc"] == 0 and ps["out"] == "p1 Running 2" and ex["out"] == "in-pod"
              and rm["rc"] == 0)
        return {"ok": ok, "create": create, "run": run, "ps": ps, "exec": ex, "rm": rm}

    def scenarios(self) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
        names = ["run", "apparmor", "sleeper", "exec", "exec_it", "exec_detach", "exec_user", "exec_apparmor", "top",
                 "ps", "stats", "update", "pause", "stop", "kill_paused", "device", "mknod", "ports",
                 "keep_id" if self.rootless else "", "userns_auto", "pod"]
        return [(n, getattr(self, n)) for n in names if n]

    def cleanup(self) -> None:
        self.pm("pod", "rm", "-af", "-t", "0")
        self.pm("rm", "-af", "-t", "0")

    def calls(self) -> dict[str, Any]:
        """Per runtime verb: how many calls, their total and longest seconds, failures."""
        out: dict[str, Any] = {}
        for line in (_read(str(self.calls_log)) or "").splitlines():
            t0, t1, rc, *argv = line.split()
            verbs = [a for a in argv if not a.startswith("-") and "/" not in a]
            verb = verbs[0] if verbs else "?"
            entry = out.setdefault(verb, {"n": 0, "total": 0.0, "max": 0.0, "failed": 0})
            d = float(t1) - float(t0)
            entry["n"] += 1
            entry["total"] = round(entry["total"] + d, 2)
            entry["max"] = round(max(entry["max"], d), 2)
            entry["failed"] += rc != "0"
        return out

    def run_all(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for name, fn in self.scenarios():
            _progress(f"{self.mode} {self.runtime}: {name}")
            started = time.monotonic()
            try:
                results[name] = fn()
            except Exception:
                results[name] = {"ok": False, "error": traceback.format_exc()}
            results[name]["seconds"] = round(time.monotonic() - started, 2)
        self.cleanup()
        return {"scenarios": results, "calls": self.calls()}


def run_mode(mode: str) -> dict[str, Any]:
    """Both runtimes in one mode (as the current user): the image imported once, a warm-up first."""
    base = Path(tempfile.mkdtemp(prefix=f"laptop-{mode}-"))
    base.chmod(0o755)
    out: dict[str, Any] = {"uid": os.getuid()}
    first = Mode(mode, "runc", base)
    out["info"] = first.raw(["podman", "info", "--format",
                             "{{.Host.CgroupManager}} {{.Host.CgroupsVersion}} {{.Host.NetworkBackend}} "
                             "{{.Store.GraphDriverName}} {{.Host.Security.AppArmorEnabled}}"])
    out["import"] = first.raw(["podman", "import", "--change", 'CMD ["/bin/sh"]', str(SHARE / "bb.tar"), IMAGE])
    # podman builds its pause image at the first pod and loads its AppArmor profile at the first
    # container: neither belongs to a runtime's timings
    out["warmup"] = [first.raw(["podman", "pod", "create", "--name", "warm"]),
                     first.raw(["podman", "pod", "rm", "-f", "warm"]),
                     first.pm("run", "--rm", IMAGE, "true")]
    for runtime in RUNTIMES:
        out[runtime] = (first if runtime == first.runtime else Mode(mode, runtime, base)).run_all()
        if not first.rootless:  # what a run cut short by the VM's timeout still reports
            with open(SHARE / f"{mode}.partial.json", "w") as f:
                json.dump(out, f)
    shutil.rmtree(base, ignore_errors=True)
    return out


def run_rootless() -> dict[str, Any]:
    """The rootless mode as the test user through a PAM login (XDG_RUNTIME_DIR, the user bus)."""
    user = pwd.getpwuid(TEST_UID)
    env = {"LAPTOP_SHARE": str(SHARE), "PYTHONDONTWRITEBYTECODE": "1",
           "DBUS_SESSION_BUS_ADDRESS": f"unix:path=/run/user/{TEST_UID}/bus", "HOME": user.pw_dir}
    argv = ["systemd-run", "-P", "--wait", "-q", "-p", "PAMName=login", f"--uid={TEST_UID}",
            f"--working-directory={user.pw_dir}", *(f"--setenv={k}={v}" for k, v in env.items()),
            "--", sys.executable, str(Path(__file__).resolve()), "--mode", "rootless"]
    log = SHARE / "rootless.log"  # its progress, readable on the host while it runs
    with open(log, "w") as err:
        res = subprocess.run(argv, stdout=subprocess.PIPE, stderr=err, text=True, timeout=1200,
                             stdin=subprocess.DEVNULL)
    if res.returncode:
        return {"error": f"exit {res.returncode}: {(_read(str(log)) or '')[-3000:]}"}
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def startup_costs() -> dict[str, list[float]]:
    """Seconds of the cheapest calls (3 each): the floor under every runtime call podman makes.

    A missing container's ``state`` is the shortest path through each runtime; the bare
    interpreter shows how much of pyouki's share is Python's own start.
    """
    probes = {"python -IS": ["/opt/pyouki/venv/bin/python", "-IS", "-c", "pass"],
              "pyouki state": [RUNTIMES["pyouki"], "state", "laptop-no-such"],
              "runc state": [RUNTIMES["runc"], "state", "laptop-no-such"]}
    out: dict[str, list[float]] = {}
    for name, argv in probes.items():
        out[name] = []
        for _ in range(3):
            t0 = time.monotonic()
            subprocess.run(argv, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
            out[name].append(round(time.monotonic() - t0, 3))
    return out


def environment() -> dict[str, Any]:
    """What the laptop is: kernel, LSM, cgroups, versions, and setup-machine's second run."""

    def version(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return ""

    return {
        "kernel": os.uname().release,
        "apparmor": _read("/sys/module/apparmor/parameters/enabled"),
        "cgroup2": _read("/sys/fs/cgroup/cgroup.controllers"),
        "user_subtree_control": _read(f"/sys/fs/cgroup/user.slice/user-{TEST_UID}.slice/user@{TEST_UID}.service/"
                                      "cgroup.subtree_control"),
        "podman": version(["podman", "--version"]),
        "runc": version(["runc", "--version"]),
        "pyouki": os.path.realpath(RUNTIMES["pyouki"]),
        "setup_rc": _read(str(SHARE / "setup.rc")),
        "setup_log": (_read(str(SHARE / "setup.log")) or "")[-2000:],
        "startup": startup_costs(),
    }


def main(argv: list[str]) -> int:
    if argv[:1] == ["--mode"]:
        print(json.dumps(run_mode(argv[1])))
        return 0
    results: dict[str, Any] = {"env": environment()}
    # PYOUKI_LAPTOP_MODES=rootful (say) runs one mode only: a shorter boot while debugging
    modes = (os.environ.get("PYOUKI_LAPTOP_MODES") or "rootless rootful").split()
    for mode, fn in (("rootless", run_rootless), ("rootful", lambda: run_mode("rootful"))):
        if mode not in modes:
            continue
        _progress(f"mode {mode}")
        started = time.monotonic()
        try:
            results[mode] = fn()
        except Exception:
            results[mode] = {"error": traceback.format_exc()}
        results[mode]["seconds"] = round(time.monotonic() - started, 2)
        with open(argv[0] + ".partial", "w") as f:
            json.dump(results, f, indent=1)
    results["ok"] = all("error" not in results[m] for m in modes)
    with open(argv[0] + ".part", "w") as f:
        json.dump(results, f, indent=1)
    os.rename(argv[0] + ".part", argv[0])
    _progress("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
