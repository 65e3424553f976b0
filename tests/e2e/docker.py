"""dockerd from the docker.io package, extracted, never installed (ENGINES.md section 5).

Installing docker.io would start a dockerd that rewrites the host's iptables; instead the
.deb is fetched with ``apt-get download`` and unpacked under the session dir. dockerd uses
the private containerd, keeps its data, exec-root, socket, pidfile and trust key under the
session dir, creates no bridge and touches no iptables or ip_forward; the only host path it
creates, the empty /run/docker/plugins, is removed when it stops. Both runtimes are
registered in daemon.json (``runc`` is a reserved runtime name, so runc is ``e2e-runc``).
"""

from __future__ import annotations

import glob
import json
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

CGROUP_PARENT = "pyouki-e2e-docker"
PLUGIN_DIRS = (Path("/run/docker"), Path("/run/docker/plugins"))


def runtime_name(rt: Runtime) -> str:
    """The name ``rt`` is registered under in daemon.json."""
    return "pyouki" if rt.is_pyouki else f"e2e-{rt.name}"


def fetch_docker(dest: Path) -> Path | str:
    """Download and unpack docker.io into ``dest``; the unpacked root, or why it failed."""
    dest.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["apt-get", "download", "docker.io"], cwd=dest, capture_output=True, text=True, timeout=300)
    debs = glob.glob(str(dest / "docker.io_*.deb"))
    if r.returncode != 0 or not debs:
        return f"apt-get download docker.io failed: {r.stderr.strip().splitlines()[-1:]}"
    pkg = dest / "pkg"
    r = subprocess.run(["dpkg-deb", "-x", debs[0], str(pkg)], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        return f"dpkg-deb -x failed: {r.stderr.strip()}"
    return pkg


@dataclass
class Docker:
    """One private dockerd and the docker CLI pointed at it."""

    base: Path
    pkg: Path
    containerd_address: str
    runtimes: dict[str, Runtime]
    mark: str
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    created_run_dirs: list[Path] = field(default_factory=list)

    def start(self) -> None:
        """Write daemon.json, start dockerd and wait for ``docker version``."""
        b = self.base
        config = {
            "data-root": f"{b}/root", "exec-root": f"{b}/exec", "pidfile": f"{b}/docker.pid",
            "hosts": [f"unix://{b}/docker.sock"], "containerd": self.containerd_address,
            "iptables": False, "ip6tables": False, "ip-forward": False, "ip-masq": False,
            "bridge": "none", "userland-proxy": False,
            "storage-driver": "overlay2", "exec-opts": ["native.cgroupdriver=cgroupfs"],
            "cgroup-parent": f"/{CGROUP_PARENT}",
            "runtimes": {runtime_name(rt): {"path": rt.path} for rt in self.runtimes.values()},
            # the libtrust key would otherwise go to /etc/docker/key.json (daemon.json only, no flag)
            "deprecated-key-path": f"{b}/key.json",
        }
        (b / "daemon.json").write_text(json.dumps(config, indent=2))
        # dockerd creates its plugin discovery dir whatever the exec-root: remove it if it is ours
        self.created_run_dirs = [p for p in PLUGIN_DIRS if not p.exists()]
        path = f"{self.pkg}/usr/bin:{self.pkg}/usr/sbin:{BASE_PATH}"
        self.env = {"PATH": path, "HOME": str(b), "DOCKER_CONFIG": str(b / "cli"),
                    "DOCKER_HOST": f"unix://{b}/docker.sock", MARK_VAR: self.mark}
        with open(b / "dockerd.log", "wb") as log:
            self.proc = subprocess.Popen(
                [f"{self.pkg}/usr/sbin/dockerd", "--config-file", str(b / "daemon.json")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env, start_new_session=True,
            )
        ready = wait_for(lambda: self.proc is not None and (self.proc.poll() is not None or
                                                           self.docker("version").returncode == 0), 60.0, 0.2)
        assert ready and self.proc.poll() is None, f"dockerd did not start:\n{(b / 'dockerd.log').read_text()}"

    def docker(self, *args: str, timeout: float = 90.0, pty: bool = False) -> Result:
        """``docker ARGS`` against the private daemon."""
        argv = [f"{self.pkg}/usr/bin/docker", *args]
        return run(under_pty(argv) if pty else argv, env=self.env, timeout=timeout, cwd=self.base)

    def stop(self) -> None:
        """Remove every container, stop dockerd and whatever it left."""
        if self.proc is not None and self.proc.poll() is None:
            ids = self.docker("ps", "-aq").stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, timeout=120)
            terminate(self.proc.pid, timeout=20)
            self.proc.wait()
        kill_pids(descendants(marked_pids(self.mark)))  # shims and the containers below them
        for d in reversed(self.created_run_dirs):
            try:
                d.rmdir()
            except OSError:
                pass
        self.created_run_dirs = []
