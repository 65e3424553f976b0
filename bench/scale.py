"""How cost grows with the work: pyouki beside runc (see bench/README.md, "Scale"). As root:

    bench/scale                                   # every case, 5 rounds per point
    bench/scale --only mounts,seccomp --runs 3
    bench/scale --mounts 10,100,1000 --existing 200 --markdown

Cases (each point: rounds interleaved pyouki, runc, pyouki, runc...; medians):
  mounts      `create` with N tmpfs mounts (under one tmpfs at /mnt, so nothing lands on disk)
  masked      `create` with N masked files (linux.maskedPaths)
  seccomp     `create` with no profile, podman's default (converted to OCI as podman does for a
              default container) and a 1,000-rule profile; pyouki's BPF cache emptied before
              each "first" round and kept for "cached" (runc has no cache: both rows are equal work)
  concurrent  N containers created, started, waited for and deleted at once (N threads):
              containers/s and p50/p99 of one container's create+start+exit+delete
  existing    `list` and `state ID` with 0 and K stopped containers in the state dir

Timed: wall clock around spawn and wait4, and CPU: the command's (user+system, its reaped
children included, from wait4) plus, for `create`, what the waiting container process has used
(/proc/PID/schedstat: the mounts, the seccomp filter... happen there, in both runtimes). CPU is
the column to trust on a loaded machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import bench_setup
from bench_proc import become_subreaper

DEFAULT_PYOUKI = "/opt/pyouki/venv/bin/pyouki"
CASES = ("mounts", "masked", "seccomp", "concurrent", "existing")
PODMAN_SECCOMP = "/usr/share/containers/seccomp.json"
ARCHES = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]


class Failed(Exception):
    """A runtime command failed."""


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run argv; (wall ms, cpu ms) from wait4. Failed with the first stderr line on failure."""
    with tempfile.TemporaryFile() as err:
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            t0 = time.monotonic_ns()
            pid = os.posix_spawn(argv[0], argv, env, file_actions=[
                (os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, devnull, 1),
                (os.POSIX_SPAWN_DUP2, err.fileno(), 2)])
            _, status, ru = os.wait4(pid, 0)
            wall = (time.monotonic_ns() - t0) / 1e6
        finally:
            os.close(devnull)
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise Failed(f"{' '.join(argv[-3:])}: {err.read().decode(errors='replace').strip()[:300]}")
    return wall, (ru.ru_utime + ru.ru_stime) * 1000


def quiet(argv: list[str], env: dict[str, str]) -> None:
    """Run argv for cleanup, ignoring the outcome."""
    # no pipes: a container started by create or run -d keeps the runtime's stdio open
    try:
        subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        pass


def container_cpu(pidfile: str) -> float:
    """CPU ms the waiting container process has used so far (its set-up: mounts, seccomp...),
    which create's wait4 does not count: it is not create's child to reap."""
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e6
    except (OSError, ValueError):
        return 0.0


def wait_exit(pidfile: str, timeout: float = 30.0) -> None:
    """Wait until the pid in pidfile has exited (a pidfd: it is not our child)."""
    with open(pidfile) as f:
        pid = int(f.read().strip())
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    reap(pid)


def kill_and_reap(pidfile: str) -> None:
    """SIGKILL the waiting container and reap it (untimed), so delete finds it gone."""
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
        os.kill(pid, 9)
    except (OSError, ValueError):
        return
    reap(pid)


def reap(pid: int) -> None:
    """Reap pid at once, as an engine's monitor (conmon, the shim) does: we are the subreaper of the
    containers, and a cgroup stays populated until its last zombie is reaped (delete would wait)."""
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def reap_exited() -> None:
    """Reap every exited child (containers of `run -d`), without waiting."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


class Scale:
    """The runtimes, a rootfs, a base config, and the cases."""

    def __init__(self, opts: argparse.Namespace, tmp: str) -> None:
        self.opts, self.tmp = opts, tmp
        self.env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
        self.runtimes: dict[str, list[str]] = {}
        for name in opts.runtimes.split(","):
            path = opts.pyouki if name == "pyouki" else shutil.which(name)
            if path and os.access(path, os.X_OK):
                self.runtimes[name] = [path, "--root", os.path.join(tmp, "state", name)]
        self.rootfs = os.path.join(tmp, "rootfs")
        bench_setup.build_rootfs(self.rootfs)
        self.config = bench_setup.runtime_spec([shutil.which("runc") or opts.pyouki], os.path.join(tmp, "spec"),
                                               False)
        self.rows: list[dict[str, Any]] = []
        self.seq = 0

    # ---- helpers ---------------------------------------------------------------------------

    def bundle(self, name: str, args: list[str], edit: Any = None) -> str:
        """A bundle on the shared rootfs with args; edit(config) adjusts the config."""
        cfg = json.loads(json.dumps(self.config))
        if edit is not None:
            edit(cfg)
        return bench_setup.write_bundle(cfg, self.rootfs, args, os.path.join(self.tmp, "bundles", name))

    def cid(self) -> str:
        self.seq += 1
        return f"s{self.seq}"

    def record(self, case: str, point: str, rt: str, walls: list[float], cpus: list[float], **extra: Any) -> None:
        row = {"case": case, "point": point, "runtime": rt, "n": len(walls),
               "wall_ms": statistics.median(walls) if walls else None,
               "cpu_ms": statistics.median(cpus) if cpus else None, **extra}
        self.rows.append(row)
        print(_fmt_row(row), flush=True)

    def create_point(self, case: str, point: str, bundle: str, before: Any = None) -> None:
        """Time `create` of bundle, runs rounds interleaved over the runtimes; delete untimed."""
        samples: dict[str, tuple[list[float], list[float]]] = {rt: ([], []) for rt in self.runtimes}
        errors: dict[str, str] = {}
        for _ in range(self.opts.runs):
            for rt, argv in self.runtimes.items():
                if rt in errors:
                    continue
                if before is not None:
                    before(rt, argv)
                cid = self.cid()
                pidfile = os.path.join(self.tmp, f"pid-{cid}")
                try:
                    wall, cpu = timed([*argv, "create", "--bundle", bundle, "--pid-file", pidfile, cid], self.env)
                    samples[rt][0].append(wall)
                    samples[rt][1].append(cpu + container_cpu(pidfile))
                except Failed as e:
                    errors[rt] = str(e)
                finally:
                    kill_and_reap(pidfile)
                    quiet([*argv, "delete", "--force", cid], self.env)
        for rt, (walls, cpus) in samples.items():
            self.record(case, point, rt, walls, cpus, error=errors.get(rt, ""))

    # ---- cases -----------------------------------------------------------------------------

    def mounts(self) -> None:
        for n in self.opts.mounts:
            def edit(cfg: dict, n: int = n) -> None:
                cfg["mounts"].append({"destination": "/mnt", "type": "tmpfs", "source": "tmpfs"})
                cfg["mounts"] += [{"destination": f"/mnt/m{i}", "type": "tmpfs", "source": "tmpfs",
                                   "options": ["nosuid", "nodev", "size=64k"]} for i in range(n)]
            self.create_point("mounts (tmpfs)", str(n), self.bundle(f"mounts{n}", ["true"], edit))

    def masked(self) -> None:
        masked_dir = os.path.join(self.rootfs, "masked")
        os.makedirs(masked_dir, exist_ok=True)
        for n in self.opts.mounts:
            for i in range(n):
                open(os.path.join(masked_dir, f"f{i}"), "a").close()

            def edit(cfg: dict, n: int = n) -> None:
                cfg["linux"]["maskedPaths"] = [f"/masked/f{i}" for i in range(n)]
            self.create_point("maskedPaths", str(n), self.bundle(f"masked{n}", ["true"], edit))

    def seccomp(self) -> None:
        profiles: dict[str, dict | None] = {"none": None}
        if os.path.exists(PODMAN_SECCOMP):
            profiles["podman default"] = podman_profile(PODMAN_SECCOMP)
        profiles["1,000 rules"] = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ARCHES, "syscalls": [
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
             "args": [{"index": 0, "value": 0x10000 + i, "op": "SCMP_CMP_EQ"}]} for i in range(1000)]}

        def clear_cache(rt: str, argv: list[str]) -> None:
            shutil.rmtree(os.path.join(argv[2], ".cache"), ignore_errors=True)

        for name, profile in profiles.items():
            def edit(cfg: dict, profile: dict | None = profile) -> None:
                cfg["linux"].pop("seccomp", None)
                if profile is not None:
                    cfg["linux"]["seccomp"] = profile
            b = self.bundle("seccomp-" + name.replace(" ", "-").replace(",", ""), ["true"], edit)
            self.create_point("seccomp", f"{name}, first", b, before=clear_cache)
            if profile is not None:
                self.create_point("seccomp", f"{name}, cached", b)

    def concurrent(self) -> None:
        b = self.bundle("true", ["true"])
        for n in self.opts.concurrency:
            for rt, argv in self.runtimes.items():
                lat: list[float] = []
                errors: list[str] = []

                def one(argv: list[str] = argv, lat: list[float] = lat, errors: list[str] = errors) -> None:
                    cid = self.cid()
                    pidfile = os.path.join(self.tmp, f"pid-{cid}")
                    t0 = time.monotonic()
                    try:
                        timed([*argv, "create", "--bundle", b, "--pid-file", pidfile, cid], self.env)
                        timed([*argv, "start", cid], self.env)
                        wait_exit(pidfile)
                        timed([*argv, "delete", cid], self.env)
                        lat.append((time.monotonic() - t0) * 1000)
                    except (Failed, OSError, ValueError) as e:
                        errors.append(str(e))
                        quiet([*argv, "delete", "--force", cid], self.env)

                walls = []
                for _ in range(self.opts.runs):
                    threads = [threading.Thread(target=one) for _ in range(n)]
                    t0 = time.monotonic()
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    walls.append((time.monotonic() - t0) * 1000)
                lat.sort()
                self.record("concurrent create+start+delete", f"N={n}", rt, walls, [],
                            per_s=n * 1000 / statistics.median(walls), p50=_pct(lat, 50), p99=_pct(lat, 99),
                            error=errors[0] if errors else "")

    def existing(self) -> None:
        b = self.bundle("true", ["true"])
        for k in (0, self.opts.existing):
            for rt, argv in self.runtimes.items():
                have = len(os.listdir(argv[2])) if os.path.isdir(argv[2]) else 0
                for i in range(have, k):  # stopped containers: run -d of `true`, never deleted
                    quiet([*argv, "run", "--detach", "--bundle", b, f"old{i}"], self.env)
                    reap_exited()
                probe = self.cid()
                quiet([*argv, "create", "--bundle", b, probe], self.env)
                for verb, args in (("list", ["list"]), ("state", ["state", probe])):
                    walls, cpus = [], []
                    for _ in range(self.opts.runs):
                        try:
                            w, c = timed([*argv, *args], self.env)
                        except Failed:
                            continue
                        walls.append(w)
                        cpus.append(c)
                    self.record(f"{verb} with K containers", f"K={k}", rt, walls, cpus)
                quiet([*argv, "delete", "--force", probe], self.env)

    def cleanup(self) -> None:
        for argv in self.runtimes.values():
            try:
                names = os.listdir(argv[2])
            except OSError:
                continue
            for name in names:
                if not name.startswith("."):
                    quiet([*argv, "delete", "--force", name], self.env)


def podman_profile(path: str) -> dict:
    """podman's default seccomp.json (containers' format) as the OCI profile podman passes for a
    default container: entries kept for x86_64, none that needs a capability the default set lacks."""
    with open(path) as f:
        src = json.load(f)
    default_caps = {"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_NET_BIND_SERVICE",
                    "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT"}
    rules = []
    for s in src.get("syscalls", []):
        inc, exc = s.get("includes") or {}, s.get("excludes") or {}
        if inc.get("arches") and "amd64" not in inc["arches"] and "x86_64" not in inc["arches"]:
            continue
        if exc.get("arches") and ("amd64" in exc["arches"] or "x86_64" in exc["arches"]):
            continue
        if inc.get("caps") and not set(inc["caps"]) <= default_caps:
            continue
        if exc.get("caps") and set(exc["caps"]) & default_caps:
            continue
        rule = {k: s[k] for k in ("names", "action", "args", "errnoRet") if s.get(k) is not None}
        rules.append(rule)
    out = {"defaultAction": src["defaultAction"], "architectures": ARCHES, "syscalls": rules}
    if src.get("defaultErrnoRet") is not None:
        out["defaultErrnoRet"] = src["defaultErrnoRet"]
    return out


def _pct(values: list[float], p: int) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _fmt_row(r: dict[str, Any]) -> str:
    if r.get("error"):
        return f"{r['case']:<32} {r['point']:<24} {r['runtime']:<7} FAILED {r['error']}"
    line = f"{r['case']:<32} {r['point']:<24} {r['runtime']:<7} n={r['n']:<3} wall {_fmt(r['wall_ms']):>8} ms"
    if r.get("cpu_ms") is not None:
        line += f"  cpu {_fmt(r['cpu_ms']):>8} ms"
    if "per_s" in r:
        line += f"  {_fmt(r['per_s'])}/s  p50 {_fmt(r['p50'])} p99 {_fmt(r['p99'])} ms"
    return line


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    """The README's table: one line per case and point, pyouki and runc side by side."""
    out = [header, "", "| case | point | pyouki wall / cpu ms | runc wall / cpu ms | ×runc (cpu) |",
           "|---|---|---|---|---|"]
    points: dict[tuple[str, str], dict[str, dict]] = {}
    for r in rows:
        points.setdefault((r["case"], r["point"]), {})[r["runtime"]] = r
    for (case, point), by in points.items():
        cells = []
        for rt in ("pyouki", "runc"):
            r = by.get(rt)
            if r is None or r.get("error"):
                cells.append("failed" if r else "-")
            elif "per_s" in r:
                cells.append(f"{_fmt(r['per_s'])}/s, p50 {_fmt(r['p50'], 0)} p99 {_fmt(r['p99'], 0)} ms")
            else:
                cells.append(f"{_fmt(r['wall_ms'])} / {_fmt(r['cpu_ms'])}")
        p, q = by.get("pyouki") or {}, by.get("runc") or {}
        key = "cpu_ms" if p.get("cpu_ms") and q.get("cpu_ms") else "wall_ms"
        ratio = f"{p[key] / q[key]:.2f}" if p.get(key) and q.get(key) else "-"
        if "per_s" in p and "per_s" in q and q["per_s"]:
            ratio = f"{q['per_s'] / p['per_s']:.2f} (1/throughput)"
        out.append(f"| {case} | {point} | {cells[0]} | {cells[1]} | {ratio} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", default=",".join(CASES))
    ap.add_argument("--mounts", default="10,100,1000,10000", help="mount and masked-path counts")
    ap.add_argument("--concurrency", default="1,10,50")
    ap.add_argument("--existing", type=int, default=1000, help="K for list/state")
    ap.add_argument("--runtimes", default="pyouki,runc")
    ap.add_argument("--pyouki", default=DEFAULT_PYOUKI)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                   "scale.json"))
    ap.add_argument("--markdown", action="store_true", help="also print the README's table")
    opts = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/scale: run as root", file=sys.stderr)
        return 2
    opts.mounts = [int(x) for x in opts.mounts.split(",") if x]
    opts.concurrency = [int(x) for x in opts.concurrency.split(",") if x]
    header = (f"bench/scale {' '.join(sys.argv[1:])} — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{platform.node()}, {os.cpu_count()} cpus, kernel {platform.release()}, load "
              f"{os.getloadavg()[0]:.1f}")
    print(header, flush=True)
    become_subreaper()  # the containers are ours to reap, as they are conmon's or the shim's
    tmp = tempfile.mkdtemp(prefix="pyouki-scale-")
    scale = Scale(opts, tmp)
    try:
        for case in opts.only.split(","):
            getattr(scale, case)()
    finally:
        scale.cleanup()
        bench_setup.unmount_under(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.dirname(opts.json), exist_ok=True)
    with open(opts.json, "w") as f:
        json.dump({"header": header, "rows": scale.rows}, f, indent=1)
    if opts.markdown:
        print(markdown(scale.rows, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
