"""Benchmark pyouki side by side with runc and crun (see bench/README.md).

Usage: bench/run [--runs N] [--only CASE[,CASE]] [--json OUT] [--rootless] [--pyouki PATH]

Each case runs every runtime in turn, round after round (A B C A B C ...), so drift of the
machine spreads over all of them; one untimed warm-up round comes first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bench_report
import bench_setup
from bench_proc import (
    Reaper,
    Result,
    SmapsReader,
    Spawner,
    become_subreaper,
    build_spawnd,
    children_cpu_ns,
    drain_children,
    kill_quietly,
    reap_exited,
)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PYOUKI = "/opt/pyouki/venv/bin/pyouki"
CASES = {
    "csd": "create+start+delete",
    "csd-force": "create+start+delete -f",
    "run": "run",
    "single": "single commands",
    "podman": "podman run --rm",
    "wasm": "wasm",
}
SINGLE_STEPS = ("create", "start", "state", "exec", "kill", "delete")
# the wasm case: pyouki running a WASI module that does nothing (the wasm `true`) beside every
# runtime's Linux `true`; its rows are the steps of create+start+delete
WASM_ACTOR = "pyouki wasm"
WASM_TRUE = '(module (memory (export "memory") 1) (func (export "_start")))\n'
WASM_GROUPS = (("wasm: create", "create"), ("wasm: start until exit", "start+exit"),
               ("wasm: create+start+delete", None))
EXIT_TIMEOUT = 10.0


class CaseFailed(Exception):
    """A runtime command failed during a sample."""

    def __init__(self, step: str, err: str) -> None:
        super().__init__(f"{step}: {err}")
        self.step = step
        self.err = err


@dataclass
class Runtime:
    """One runtime under test, with its own state dir, bundles and stderr log."""

    name: str
    argv: list[str]  # command prefix, including --root
    podman_runtime: str  # what to pass to podman --runtime
    spawner: Spawner
    bundle_true: str = ""
    bundle_sleep: str = ""
    bundle_wasm: str = ""
    version: str = ""
    spec_from: str = ""


@dataclass
class Sample:
    """One measured round of a case for one runtime."""

    wall_ns: int = 0
    cpu_ns: int = 0
    rss_kb: int = 0
    ctr_rss_kb: int = -1
    ctr_pss_kb: int = -1
    steps: dict[str, dict[str, int]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # steps that failed without ending the sample

    def add(self, step: str, r: Result) -> None:
        """Account one timed command under step."""
        self.wall_ns += r.wall_ns
        self.cpu_ns += r.cpu_ns
        self.rss_kb = max(self.rss_kb, r.maxrss_kb)
        self.steps[step] = {"wall_ns": r.wall_ns, "cpu_ns": r.cpu_ns, "rss_kb": r.maxrss_kb}

    def as_dict(self) -> dict[str, Any]:
        """The sample as plain data for JSON."""
        return {
            "wall_ns": self.wall_ns,
            "cpu_ns": self.cpu_ns,
            "rss_kb": self.rss_kb,
            "ctr_rss_kb": self.ctr_rss_kb,
            "ctr_pss_kb": self.ctr_pss_kb,
            "steps": self.steps,
            "errors": self.errors,
        }


class Bench:
    """The runtimes, their containers, and the cases."""

    def __init__(self, opts: argparse.Namespace, tmp: str) -> None:
        self.opts = opts
        self.tmp = tmp
        self.runtimes: list[Runtime] = []
        self.env: dict[str, str] = {}
        self.smaps = SmapsReader()
        self.keep: set[int] = set()  # long-lived children of ours (helpers), never drained
        self.live: dict[tuple[str, str], Runtime] = {}
        self.reapers: dict[tuple[str, str], Reaper] = {}
        self.holder: subprocess.Popen[str] | None = None
        self.podman: bench_setup.Podman | None = None
        self.podman_note = ""
        self.python = ""
        self.spawnd: str | None = None
        self.notes: list[str] = []

    # ---- commands -------------------------------------------------------------------------

    def cmd(self, rt: Runtime, s: Sample, step: str, *args: str) -> Result:
        """Run one timed runtime command, account it in s, raise CaseFailed on failure."""
        r = rt.spawner.run([*rt.argv, *args])
        s.add(step, r)
        if r.rc != 0:
            raise CaseFailed(step, r.err)
        return r

    def quiet(self, rt: Runtime, *args: str) -> None:
        """Run an untimed runtime command for cleanup, ignoring failures."""
        try:
            subprocess.run([*rt.argv, *args], env=self.env, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            pass

    def created(self, rt: Runtime, cid: str, pidfile: str, s: Sample | None) -> Reaper | None:
        """After create: find the container's pid, measure its memory, start reaping it."""
        try:
            with open(pidfile) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        if pid <= 1:
            return None
        if s is not None:
            s.ctr_rss_kb, s.ctr_pss_kb = self.smaps.read(pid)
        reaper = Reaper(pid)
        self.reapers[(rt.name, cid)] = reaper
        return reaper

    def destroy(self, rt: Runtime, cid: str) -> None:
        """Kill and delete a container whatever its state (untimed)."""
        self.quiet(rt, "kill", cid, "9")
        self.quiet(rt, "delete", "--force", cid)
        reaper = self.reapers.pop((rt.name, cid), None)
        if reaper is not None:
            kill_quietly(reaper.pid)
            reaper.wait(EXIT_TIMEOUT)
        self.live.pop((rt.name, cid), None)

    def finish(self, rt: Runtime, cid: str) -> None:
        """Forget a container that was deleted; reap whatever else has exited."""
        self.live.pop((rt.name, cid), None)
        reaper = self.reapers.pop((rt.name, cid), None)
        if reaper is not None and not reaper.wait(EXIT_TIMEOUT):
            kill_quietly(reaper.pid)
            reaper.wait(EXIT_TIMEOUT)
        reap_exited()

    def pidfile(self, rt: Runtime, cid: str) -> str:
        """Where the runtime writes the container's pid."""
        return os.path.join(self.tmp, "pid", f"{rt.name}-{cid}")

    # ---- cases ----------------------------------------------------------------------------

    def lifecycle(self, rt: Runtime, cid: str, force: bool, bundle: str = "") -> Sample:
        """create+start+delete of `true` (or of bundle); wait for the exit first, or delete --force at once."""
        s = Sample()
        cpu0 = children_cpu_ns()
        pidfile = self.pidfile(rt, cid)
        self.live[(rt.name, cid)] = rt
        self.cmd(rt, s, "create", "create", "--bundle", bundle or rt.bundle_true, "--pid-file", pidfile, cid)
        reaper = self.created(rt, cid, pidfile, s)
        start = self.cmd(rt, s, "start", "start", cid)
        if force:
            self.cmd(rt, s, "delete", "delete", "--force", cid)
        else:
            t0 = time.perf_counter_ns()
            exited = reaper.wait(EXIT_TIMEOUT) if reaper else True
            waited = time.perf_counter_ns() - t0
            s.wall_ns += waited
            s.steps["start+exit"] = {"wall_ns": start.wall_ns + waited, "cpu_ns": start.cpu_ns,
                                     "rss_kb": start.maxrss_kb}
            if not exited:
                raise CaseFailed("wait", f"container did not exit within {EXIT_TIMEOUT:.0f}s")
            self.cmd(rt, s, "delete", "delete", cid)
        self.finish(rt, cid)
        s.cpu_ns += children_cpu_ns() - cpu0
        return s

    def run_case(self, rt: Runtime, cid: str) -> Sample:
        """`run` of `true` to completion (the runtime deletes the container itself)."""
        s = Sample()
        cpu0 = children_cpu_ns()
        self.live[(rt.name, cid)] = rt
        self.cmd(rt, s, "run", "run", "--bundle", rt.bundle_true, cid)
        self.finish(rt, cid)
        s.cpu_ns += children_cpu_ns() - cpu0
        return s

    def single(self, rt: Runtime, cid: str) -> Sample:
        """Each command on its own, on a `sleep` container: create, start, state, exec, kill, delete."""
        s = Sample()
        pidfile = self.pidfile(rt, cid)
        self.live[(rt.name, cid)] = rt
        self.cmd(rt, s, "create", "create", "--bundle", rt.bundle_sleep, "--pid-file", pidfile, cid)
        reaper = self.created(rt, cid, pidfile, s)
        self.cmd(rt, s, "start", "start", cid)
        # a failing state or exec is reported for its own row; the other commands go on
        for step, args in (("state", ("state", cid)), ("exec", ("exec", cid, "true"))):
            try:
                self.cmd(rt, s, step, *args)
            except CaseFailed as e:
                s.errors[step] = e.err
                s.steps.pop(step, None)
        self.cmd(rt, s, "kill", "kill", cid, "9")
        if reaper and not reaper.wait(EXIT_TIMEOUT):
            raise CaseFailed("kill", f"container did not exit within {EXIT_TIMEOUT:.0f}s of SIGKILL")
        self.cmd(rt, s, "delete", "delete", cid)
        self.finish(rt, cid)
        return s

    def python_start(self, spawner: Spawner, flags: list[str]) -> Sample:
        """The bare interpreter start of the runtime's venv: `python [flags] -c pass`."""
        s = Sample()
        r = spawner.run([self.python, *flags, "-c", "pass"])
        if r.rc != 0:
            raise CaseFailed("python", r.err)
        s.add("python", r)
        return s

    def podman_run(self, rt: Runtime) -> Sample:
        """`podman run --rm IMAGE true` with this runtime; conmon and cleanup are drained too."""
        assert self.podman is not None
        pm = self.podman
        s = Sample()
        cpu0 = children_cpu_ns()
        argv = [pm.path, "--runtime", rt.podman_runtime, "run", "--rm", "--network", "none", pm.image, "true"]
        r = rt.spawner.run(argv, env=pm.env)
        s.add("podman", r)
        if self.opts.rootless:  # podman's pause process holds its user namespace: it stays
            pause = os.path.join(pm.env.get("XDG_RUNTIME_DIR", ""), "libpod", "tmp", "pause.pid")
            try:
                with open(pause) as f:
                    self.keep.add(int(f.read().strip()))
            except (OSError, ValueError):
                pass
        drained = drain_children(self.keep, timeout=5.0)
        s.cpu_ns = s.cpu_ns + children_cpu_ns() - cpu0 if drained else -1
        if r.rc != 0:
            raise CaseFailed("podman run", r.err)
        return s

    # ---- rounds ---------------------------------------------------------------------------

    def rounds(self, actors: list[tuple[str, Callable[[int], Sample]]]) -> dict[str, dict[str, Any]]:
        """Run the actors interleaved for the requested rounds plus one warm-up round."""
        got: dict[str, dict[str, Any]] = {name: {"samples": [], "error": None, "step_errors": {}} for name, _ in actors}
        for i in range(-1, self.opts.runs):
            for name, fn in actors:
                res = got[name]
                if res["error"]:
                    continue
                try:
                    sample = fn(i)
                except CaseFailed as e:
                    res["error"] = str(e)
                    self.cleanup_containers()
                    continue
                for step, err in sample.errors.items():
                    res["step_errors"].setdefault(step, err)
                if i >= 0:
                    res["samples"].append(sample.as_dict())
        return got

    def actors(self, case: str) -> list[tuple[str, Callable[[int], Sample]]]:
        """The (name, sample function) pairs that take part in a case."""
        out: list[tuple[str, Callable[[int], Sample]]] = []
        for rt in self.runtimes:
            if case == "wasm" and rt.bundle_wasm:
                out.append((WASM_ACTOR, lambda i, rt=rt: self.lifecycle(rt, f"wasm{i}", False, rt.bundle_wasm)))
            fn = self.sampler(case, rt)
            if fn is not None:
                out.append((rt.name, fn))
        if case == "single" and self.python:
            sp = self.runtimes[0].spawner if self.runtimes else self.new_spawner("python")
            out.append((bench_report.BASELINE, lambda i: self.python_start(sp, [])))
            out.append(("python -I -S -c pass", lambda i: self.python_start(sp, ["-I", "-S"])))
        return out

    def sampler(self, case: str, rt: Runtime) -> Callable[[int], Sample] | None:
        """The function that takes round i of case for rt."""
        if case == "csd":
            return lambda i: self.lifecycle(rt, f"csd{i}", force=False)
        if case == "csd-force":
            return lambda i: self.lifecycle(rt, f"csdf{i}", force=True)
        if case == "run":
            return lambda i: self.run_case(rt, f"run{i}")
        if case == "single":
            return lambda i: self.single(rt, f"one{i}")
        if case == "podman":
            return lambda i: self.podman_run(rt)
        if case == "wasm":
            return lambda i: self.lifecycle(rt, f"wtrue{i}", force=False)
        return None

    def new_spawner(self, name: str) -> Spawner:
        """A spawner with the benchmark environment and its own stderr log."""
        sp = Spawner(self.env, os.path.join(self.tmp, "log", f"{name}.err"), self.spawnd, self.opts.timeout)
        self.keep.add(sp.server_pid)
        return sp

    # ---- cleanup --------------------------------------------------------------------------

    def cleanup_containers(self) -> None:
        """Kill and delete every container we know of, and any the runtimes still list."""
        for (_, cid), rt in list(self.live.items()):
            self.destroy(rt, cid)
        for rt in self.runtimes:
            try:
                out = subprocess.run(
                    [*rt.argv, "list", "-q"], env=self.env, capture_output=True, text=True, timeout=30
                ).stdout
            except (OSError, subprocess.TimeoutExpired):
                continue
            for cid in out.split():
                self.destroy(rt, cid)
        for key, reaper in list(self.reapers.items()):
            kill_quietly(reaper.pid)
            reaper.wait(EXIT_TIMEOUT)
            self.reapers.pop(key, None)
        reap_exited()

    def cleanup(self) -> None:
        """Leave nothing behind: containers, helper processes, podman storage."""
        self.cleanup_containers()
        if self.podman is not None:
            bench_setup.podman_teardown(self.podman, self.opts.rootless)
            self.podman = None
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()
            self.holder = None
        self.smaps.stop()
        for rt in self.runtimes:
            rt.spawner.close()
        drain_children(set(), timeout=5.0)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="bench/run", description="pyouki vs runc vs crun benchmark")
    p.add_argument("--runs", type=int, default=20, help="measured rounds per case (default 20)")
    p.add_argument("--only", default="", help=f"comma-separated cases: {', '.join(CASES)}")
    p.add_argument("--json", default=os.path.join(HERE, "results", "latest.json"), help="JSON output path")
    p.add_argument("--pyouki", default=DEFAULT_PYOUKI, help="pyouki executable")
    p.add_argument("--runtimes", default="pyouki,runc,crun", help="runtimes to compare, in round order")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before a command counts as hung")
    p.add_argument("--rootless", action="store_true", help=f"run as the unprivileged user {bench_setup.TEST_USER}")
    p.add_argument("--podman-image", default="", help="image for the podman case (default: imported busybox)")
    opts = p.parse_args(argv)
    cases = [c for c in opts.only.split(",") if c] or list(CASES)
    bad = [c for c in cases if c not in CASES]
    if bad:
        p.error(f"unknown case {bad[0]!r}: choose from {', '.join(CASES)}")
    opts.cases = cases
    if opts.runs < 1:
        p.error("--runs must be at least 1")
    return opts


def setup(b: Bench, user: bench_setup.User | None) -> None:
    """Build the rootfs and bundles and find the runtimes (already as the benchmark user)."""
    opts, tmp = b.opts, b.tmp
    for d in ("state", "pid", "log", "bin", "spec"):
        os.makedirs(os.path.join(tmp, d), exist_ok=True)
    b.env = {"PATH": bench_setup.SYS_PATH, "HOME": user.home if user else "/root", "LANG": "C.UTF-8"}
    if user:
        xdg = os.path.join(tmp, "xdg")
        os.makedirs(xdg, mode=0o700, exist_ok=True)
        b.env.update(XDG_RUNTIME_DIR=xdg, USER=user.name, LOGNAME=user.name)
    b.spawnd = build_spawnd(os.path.join(HERE, "spawnd.c"), os.path.join(tmp, "bin", "spawnd"))
    if not b.spawnd:
        b.notes.append("no C compiler: commands spawned from Python, CLI peak RSS not measured")
    rootfs = os.path.join(tmp, "rootfs")
    bench_setup.build_rootfs(rootfs)

    paths = {
        "pyouki": opts.pyouki,
        "runc": shutil.which("runc", path=bench_setup.SYS_PATH),
        "crun": shutil.which("crun", path=bench_setup.SYS_PATH),
    }
    py = bench_setup.interpreter_of(opts.pyouki) if os.path.exists(opts.pyouki) else None
    b.python = py or "/opt/pyouki/venv/bin/python"
    specs: dict[str, dict] = {}
    for name in [n for n in opts.runtimes.split(",") if n]:
        exe = paths.get(name) or shutil.which(name, path=bench_setup.SYS_PATH)
        if not exe or not os.path.exists(exe):
            b.notes.append(f"{name}: not installed, skipped")
            continue
        exe = os.path.abspath(exe)
        direct = exe
        podman_rt = exe
        if name == "crun":
            podman_rt = bench_setup.crun_hybrid_wrapper(os.path.join(tmp, "bin"), exe)
            if user:
                b.holder = bench_setup.start_ns_holder()
                b.keep.add(b.holder.pid)
                direct = bench_setup.crun_rootless_wrapper(os.path.join(tmp, "bin"), exe, b.holder.pid)
                b.notes.append("crun (rootless): runs inside one long-lived user+mount namespace (nsenter)")
            else:
                direct = podman_rt
            b.notes.append("crun: runs through a wrapper that hides cgroup2 in a private mount namespace")
        state = os.path.join(tmp, "state", name)
        os.makedirs(state, mode=0o700, exist_ok=True)
        rt = Runtime(name, [direct, "--root", state], podman_rt, b.new_spawner(name))
        rt.version = bench_setup.runtime_version([exe])
        # each runtime gets the config its own `spec` writes; pyouki falls back to runc's
        for src, src_exe in ((name, exe), ("runc", paths["runc"])):
            if not src_exe:
                continue
            try:
                if src not in specs:
                    specs[src] = bench_setup.runtime_spec([src_exe], os.path.join(tmp, "spec", src), bool(user))
                rt.spec_from = src
                break
            except (bench_setup.SetupError, OSError, ValueError) as e:
                b.notes.append(f"{name}: `spec` failed ({e}), using runc's")
        if not rt.spec_from:
            b.notes.append(f"{name}: no config could be generated, skipped")
            continue
        drop_userns = bool(user) and name == "crun"
        base = os.path.join(tmp, "bundles", name)
        rt.bundle_true = bench_setup.write_bundle(
            specs[rt.spec_from], rootfs, ["true"], os.path.join(base, "true"), drop_userns
        )
        rt.bundle_sleep = bench_setup.write_bundle(
            specs[rt.spec_from], rootfs, ["sleep", "1000"], os.path.join(base, "sleep"), drop_userns
        )
        if name == "pyouki" and "wasm" in opts.cases:
            with open(os.path.join(rootfs, "true.wat"), "w") as f:
                f.write(WASM_TRUE)
            os.chmod(os.path.join(rootfs, "true.wat"), 0o755)
            rt.bundle_wasm = bench_setup.write_bundle(
                specs[rt.spec_from], rootfs, ["/true.wat"], os.path.join(base, "wasm"), drop_userns,
                annotations={"run.oci.handler": "wasm"},
            )
        b.runtimes.append(rt)
        if direct != exe:
            cost = wrapper_cost(rt.spawner, direct, exe)
            b.notes.append(f"crun: the wrapper adds {cost:.1f} ms per call (median, `--version`)")

    if "podman" in opts.cases:
        podman = shutil.which("podman", path=bench_setup.SYS_PATH)
        if not podman:
            b.podman_note = "podman not installed: case skipped"
        else:
            try:
                b.podman = bench_setup.podman_setup(podman, os.path.join(tmp, "podman"), rootfs, b.env, bool(user))
                if opts.podman_image:
                    b.podman.image = opts.podman_image
            except (bench_setup.SetupError, OSError, subprocess.TimeoutExpired) as e:
                b.podman_note = f"podman set-up failed, case skipped: {e}"


def wrapper_cost(sp: Spawner, wrapper: str, exe: str, n: int = 15) -> float:
    """Median wall ms of `wrapper --version` minus that of `exe --version`, interleaved."""
    import statistics

    walls: dict[str, list[int]] = {wrapper: [], exe: []}
    for _ in range(n):
        for path in walls:
            walls[path].append(sp.run([path, "--version"]).wall_ns)
    return (statistics.median(walls[wrapper]) - statistics.median(walls[exe])) / 1e6


def run_all(b: Bench) -> dict[str, Any]:
    """Run the selected cases and summarize them into report groups."""
    groups: dict[str, dict[str, Any]] = {}
    raw: dict[str, Any] = {}
    for case in b.opts.cases:
        if case == "podman" and b.podman is None:
            groups[CASES[case]] = {"runtimes": {}, "note": b.podman_note}
            continue
        t0 = time.monotonic()
        got = b.rounds(b.actors(case))
        raw[case] = got
        print(f"# {case}: {time.monotonic() - t0:.1f}s", file=sys.stderr)
        if case == "single":
            steps = [*SINGLE_STEPS, "python"]
            for step in steps:
                rows: dict[str, Any] = {}
                for name, res in got.items():
                    is_py = name.startswith("python")
                    if (step == "python") != is_py:
                        continue
                    flat = [{**smp["steps"][step]} for smp in res["samples"] if step in smp["steps"]]
                    if step == "create":  # the waiting process is measured between create and start
                        for f, smp in zip(flat, res["samples"], strict=True):
                            f.update(ctr_rss_kb=smp["ctr_rss_kb"], ctr_pss_kb=smp["ctr_pss_kb"])
                    err = res["error"] or (None if flat else res["step_errors"].get(step))
                    rows[name] = {**bench_report.summarize(flat), "error": err}
                label = "interpreter start" if step == "python" else step
                groups[label] = {"runtimes": rows, "ratios": bench_report.group_ratios(rows)}
            base = groups.get("interpreter start", {}).get("runtimes", {}).get(bench_report.BASELINE)
            for step in SINGLE_STEPS:
                rows = groups[step]["runtimes"]
                r = bench_report.ratio(rows.get("pyouki"), base, "wall_ms") if "pyouki" in rows else None
                if r is not None and not rows["pyouki"].get("error"):
                    groups[step]["ratios"]["pyouki/" + bench_report.BASELINE] = {
                        "wall_ms": r, "cpu_ms": None, "cli_rss_mb": None,
                    }  # fmt: skip
        elif case == "wasm":
            for label, step in WASM_GROUPS:
                rows = {}
                for name, res in got.items():
                    flat = res["samples"]
                    if step is not None:  # one step; the waiting container is measured after create
                        flat = [{**smp["steps"][step], "ctr_rss_kb": smp["ctr_rss_kb"] if step == "create" else -1,
                                 "ctr_pss_kb": smp["ctr_pss_kb"] if step == "create" else -1}
                                for smp in flat if step in smp["steps"]]
                    rows[name] = {**bench_report.summarize(flat), "error": res["error"]}
                groups[label] = {"runtimes": rows, "ratios": bench_report.group_ratios(rows, WASM_ACTOR)}
        else:
            rows = {name: {**bench_report.summarize(res["samples"]), "error": res["error"]}
                    for name, res in got.items()}  # fmt: skip
            groups[CASES[case]] = {"runtimes": rows, "ratios": bench_report.group_ratios(rows)}
    return {"groups": groups, "raw": raw}


def machine() -> dict[str, Any]:
    """A short description of the host."""
    info: dict[str, Any] = {"kernel": os.uname().release, "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
        with open("/etc/os-release") as f:
            info["os"] = next(ln.split("=", 1)[1].strip().strip('"') for ln in f if ln.startswith("PRETTY_NAME"))
    except (OSError, StopIteration):
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    """Entry point: set up, run the cases, print the table and write the JSON."""
    import json

    opts = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        print("bench: must run as root (use --rootless to measure as an unprivileged user)", file=sys.stderr)
        return 2

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    become_subreaper()
    json_out = os.path.abspath(opts.json)
    # opened now, without truncating: in --rootless mode we cannot open it once we are the user
    os.makedirs(os.path.dirname(json_out), exist_ok=True)
    json_fd = os.open(json_out, os.O_WRONLY | os.O_CREAT, 0o644)
    md_fd = os.open(os.path.splitext(json_out)[0] + ".md", os.O_WRONLY | os.O_CREAT, 0o644)  # the same reason
    user = bench_setup.ensure_user() if opts.rootless else None
    tmp = tempfile.mkdtemp(prefix="pyouki-bench-")
    os.chmod(tmp, 0o755)
    b = Bench(opts, tmp)
    started = time.time()
    result: dict[str, Any] = {}
    code = 0
    try:
        if user:
            os.chown(tmp, user.uid, user.gid)
            b.keep.add(b.smaps.start_helper())  # root helper: reads the container's smaps
            bench_setup.drop_privileges(user)
        setup(b, user)
        result = run_all(b)
    except KeyboardInterrupt:
        print("bench: interrupted, cleaning up", file=sys.stderr)
        code = 130
    except bench_setup.SetupError as e:
        print(f"bench: set-up failed: {e}", file=sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            b.cleanup()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if not result:
        os.close(json_fd)
        os.close(md_fd)
        return code

    groups = result["groups"]
    print(bench_report.table(groups))
    for note in b.notes:
        print(f"note: {note}")
    doc = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": machine(),
        "mode": "rootless" if opts.rootless else "rootful",
        "runs": opts.runs,
        "cases": opts.cases,
        "runtimes": {
            rt.name: {"argv": rt.argv[:1], "version": rt.version, "spec_from": rt.spec_from} for rt in b.runtimes
        },  # fmt: skip
        "python": b.python,
        "notes": b.notes,
        "groups": groups,
        "samples": result["raw"],
    }
    os.ftruncate(json_fd, 0)
    with os.fdopen(json_fd, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"wrote {json_out}")
    # the README's table, with the floor, the date, the machine and this command
    table_md = bench_report.readme(doc, "bench/run " + " ".join(sys.argv[1:] if argv is None else argv))
    print(table_md)
    os.ftruncate(md_fd, 0)
    with os.fdopen(md_fd, "w") as f:
        f.write(table_md + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
