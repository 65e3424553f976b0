"""A private containerd (ENGINES.md section 4) and ``ctr`` against it.

Root, state, sockets and the runc shim's ``--root`` live under the session dir; the namespace
``pyouki-e2e`` doubles as the cgroup parent of ctr's containers (``/pyouki-e2e/<id>``).
ctr's stdio fifos go to a private ``--fifo-dir``. containerd 1.6 puts shim sockets in
/run/containerd/s/ whatever the config says; the shims remove them when they exit, and the
fixture removes the (empty) directories if it created them.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from e2e.proc import (
    BASE_PATH,
    MARK_VAR,
    Result,
    descendants,
    kill_pids,
    marked_pids,
    run,
    terminate,
    under_pty,
    wait_for,
)
from e2e.runtimes import Runtime

NAMESPACE = "pyouki-e2e"
SHIM_SOCKET_DIR = Path("/run/containerd/s")


@dataclass
class Containerd:
    """One private containerd daemon."""

    base: Path
    mark: str
    namespace: str = NAMESPACE  # ctr's -n
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    created_run_dirs: list[Path] = field(default_factory=list)

    @property
    def address(self) -> str:
        """The gRPC socket."""
        return str(self.base / "containerd.sock")

    def runc_root(self, rt: Runtime) -> str:
        """The shim's ``--root`` for ``rt`` (private: never /run/containerd/runc)."""
        return str(self.base / "runc-root" / rt.name)

    def config(self) -> str:
        """The daemon's config.toml: private root, state and sockets, the CRI plugin disabled."""
        b = self.base
        return (
            "version = 2\n"
            f'root = "{b}/root"\n'
            f'state = "{b}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            "[grpc]\n"
            f'  address = "{self.address}"\n'
            "[ttrpc]\n"
            f'  address = "{self.address}.ttrpc"\n'
            "[debug]\n"
            f'  address = "{b}/debug.sock"\n'
            '[plugins."io.containerd.internal.v1.opt"]\n'
            f'  path = "{b}/opt"\n'
        )

    def start(self) -> None:
        """Write config.toml, start containerd and wait until ``ctr version`` answers."""
        b = self.base
        b.mkdir(parents=True, exist_ok=True)
        (b / "config.toml").write_text(self.config())
        self.created_run_dirs = [p for p in (SHIM_SOCKET_DIR.parent, SHIM_SOCKET_DIR) if not p.exists()]
        (b / "fifo").mkdir(exist_ok=True)
        self.env = {"PATH": BASE_PATH, "HOME": str(b), MARK_VAR: self.mark}
        with open(b / "containerd.log", "wb") as log:
            self.proc = subprocess.Popen(
                ["containerd", "--config", str(b / "config.toml")], stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, env=self.env, start_new_session=True,
            )
        ready = wait_for(lambda: self.proc is not None and (self.proc.poll() is not None or
                                                           self.ctr("version").returncode == 0), 30.0, 0.1)
        assert ready and self.proc.poll() is None, f"containerd did not start:\n{(b / 'containerd.log').read_text()}"

    def ctr(self, *args: str, timeout: float = 60.0, pty: bool = False) -> Result:
        """``ctr --address SOCK -n NAMESPACE ARGS`` (``pyouki-e2e`` unless set)."""
        argv = ["ctr", "--address", self.address, "-n", self.namespace, *args]
        return run(under_pty(argv) if pty else argv, env=self.env, timeout=timeout, cwd=self.base)

    def run_args(self, rt: Runtime) -> list[str]:
        """The ``ctr run`` flags that select ``rt`` with a private state dir (and fifo dir)."""
        return ["--runc-binary", rt.path, "--runc-root", self.runc_root(rt), *self.fifo_args()]

    def fifo_args(self) -> list[str]:
        """``--fifo-dir`` for ``ctr run`` and ``ctr task exec`` (default: /run/containerd/fifo)."""
        return ["--fifo-dir", str(self.base / "fifo")]

    def remove(self, cid: str) -> None:
        """Kill and remove a task and its container, whatever state they are in."""
        self.ctr("task", "kill", "-s", "SIGKILL", cid)
        self.ctr("task", "rm", "-f", cid)
        self.ctr("container", "rm", cid)

    def stop(self) -> None:
        """Remove every container, stop containerd and whatever it left (shims)."""
        if self.proc is not None and self.proc.poll() is None:
            for cid in self.ctr("container", "ls", "-q").stdout.split():
                self.remove(cid)
            terminate(self.proc.pid)
            self.proc.wait()
        kill_pids(descendants(marked_pids(self.mark)))  # shims and the containers below them
        for d in reversed(self.created_run_dirs):
            try:
                d.rmdir()
            except OSError:
                pass
        self.created_run_dirs = []
