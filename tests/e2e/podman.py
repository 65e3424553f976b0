"""Private podman set-ups, rootful and rootless (ENGINES.md sections 2 and 3).

Each set-up has its own containers.conf, storage.conf, runroot, graphroot, tmp dir, events log,
``HOME`` and ``XDG_RUNTIME_DIR`` under the session dir; nothing in /etc/containers,
/var/lib/containers or the test user's home is read or written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
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
    under_pty,
    userns_members,
    with_fd3,
)
from e2e.runtimes import Runtime

PODMAN = "/usr/bin/podman"
# podman's default JSON-capable names plus pyouki (see e2e.runtimes)
JSON_RUNTIMES = ["crun", "runc", "kata", "runsc", "krun", "pyouki"]


def _toml_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


@dataclass
class Podman:
    """One private podman installation: ``rootful`` as root, or rootless as the test user."""

    base: Path
    mark: str
    runtimes: dict[str, Runtime]
    # XDG_RUNTIME_DIR; rootless runroot is $XDG_RUNTIME_DIR/containers and podman 4.3's exit
    # command (container cleanup) refuses a runroot longer than 50 characters, after which
    # every foreground run waits 20 s for the state to change: keep this path short
    xdg: Path
    user: tuple[int, int] | None = None
    env: dict[str, str] = field(default_factory=dict)
    # rootful podman never passes --root: the runtimes use /run/<name>; removed if we made them
    created_state_dirs: list[Path] = field(default_factory=list)

    @property
    def rootless(self) -> bool:
        """True when podman runs as the unprivileged test user."""
        return self.user is not None

    def setup(self) -> None:
        """Write the configuration and create the directories (owned by the user if rootless)."""
        b = self.base
        if not self.rootless:
            self.created_state_dirs = [p for p in (Path("/run") / n for n in self.runtimes) if not p.exists()]
        for d in ("home", "tmp", "run", "storage"):
            (b / d).mkdir(parents=True, exist_ok=True)
        os.chmod(b, 0o755)
        assert len(f"{self.xdg}/containers") <= 50, f"XDG_RUNTIME_DIR {self.xdg} is too long for podman"
        self.xdg.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.user is not None:
            os.chown(self.xdg, *self.user)
        containers = [
            "[containers]",
            # never touch the host network: no bridge, no iptables (slirp4netns is asked for explicitly)
            'netns = "none"',
        ]
        if not self.rootless:
            containers += [
                'cgroupns = "private"',
                # root on this VM lacks CAP_SYS_RESOURCE and has nofile hard 20000 (ENGINES.md)
                'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]',
            ]
        engine = [
            "[engine]",
            'cgroup_manager = "cgroupfs"',
            'events_logger = "file"',
            f'events_logfile_path = "{b}/events.log"',
        ]
        if not self.rootless:
            # rootless: keep the default $XDG_RUNTIME_DIR/libpod/tmp (private already); with
            # tmp_dir set, rootless podman 4.3 missed conmon's exit file and waited 20 s per run
            engine.append(f'tmp_dir = "{b}/tmp"')
        engine += [
            # import copies the tarball there first (default /var/tmp)
            f'image_copy_tmp_dir = "{b}/tmp"',
            f'static_dir = "{b}/storage/libpod"',
            f'volume_path = "{b}/storage/volumes"',
            'runtime = "runc"',
            f"runtime_supports_json = {_toml_list(JSON_RUNTIMES)}",
            # singular key in podman 4.3.1 (the man page's plural is ignored)
            f'runtime_supports_nocgroup = {_toml_list(["crun", "pyouki"])}',
            "[engine.runtimes]",
        ] + [f'{rt.name} = ["{rt.path}"]' for rt in self.runtimes.values()]
        (b / "containers.conf").write_text("\n".join(containers + engine) + "\n")
        driver = "vfs" if self.rootless else "overlay"
        (b / "storage.conf").write_text(
            "[storage]\n"
            f'driver = "{driver}"\n'
            f'runroot = "{b}/run"\n'
            f'graphroot = "{b}/storage"\n'
            # rootless podman ignores graphroot in a non-user storage.conf
            f'rootless_storage_path = "{b}/storage"\n'
        )
        if self.user is not None:
            for dirpath, dirnames, filenames in os.walk(b):
                for n in [dirpath, *(os.path.join(dirpath, x) for x in dirnames + filenames)]:
                    os.lchown(n, *self.user)
        self.env = {
            "PATH": BASE_PATH,
            "HOME": str(b / "home"),
            # the rootless runroot is always $XDG_RUNTIME_DIR/containers: one per store
            "XDG_RUNTIME_DIR": str(self.xdg),
            "CONTAINERS_CONF": str(b / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(b / "storage.conf"),
            # podman update writes its resources file to $TMPDIR (default /var/tmp)
            "TMPDIR": str(b / "tmp"),
            MARK_VAR: self.mark,
        }
        if self.user is not None:
            self.env["USER"] = "pyouki-test"

    def argv(self, rt: Runtime | None, *args: str) -> list[str]:
        """``podman [--runtime PATH] ARGS``."""
        return [PODMAN, *(["--runtime", rt.path] if rt else []), *args]

    def __call__(
        self,
        rt: Runtime | None,
        *args: str,
        timeout: float = 90.0,
        input: str | None = None,
        pty: bool = False,
        fd3: Path | None = None,
    ) -> Result:
        """Run podman with runtime ``rt``; ``pty`` runs it under ``script``, ``fd3`` opens a file on fd 3."""
        argv = self.argv(rt, *args)
        if fd3 is not None:
            argv = with_fd3(argv, fd3)
        if pty:
            argv = under_pty(argv)
        return run(argv, env=self.env, user=self.user, timeout=timeout, input=input, cwd=self.base)

    def _isolated(self, *args: str) -> Result:
        """Run podman where rootful image copies cannot reach the host's /var/lib/containers.

        Rootful podman 4.3 writes its blob-info cache to /var/lib/containers/cache whatever the
        storage config says, and stages layers in /var/tmp/storageNNN whatever TMPDIR and
        image_copy_tmp_dir say (image import, the pause image build). Those steps run in a
        private mount namespace with tmpfs on /var/lib and /var/tmp; nothing stays mounted after
        an import or a build, so later commands in the host namespace see the same store.
        Rootless podman keeps the cache under the private HOME already.
        """
        if self.rootless:
            return self(None, *args)
        argv = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                'mount -t tmpfs -o mode=0755 e2e-var-lib /var/lib && '
                'mount -t tmpfs -o mode=1777 e2e-var-tmp /var/tmp && exec "$@"', "sh", *self.argv(None, *args)]
        return run(argv, env=self.env, timeout=120, cwd=self.base)

    def prepare_images(self, rootfs_tar: Path, ref: str) -> None:
        """Import the busybox rootfs as ``ref`` and build podman's pause image (pod infra)."""
        self._isolated("import", "--change", 'CMD ["/bin/sh"]', "--change", "ENV PATH=/bin",
                       str(rootfs_tar), ref).ok()
        # the first pod create builds localhost/podman-pause (catatonit) from scratch
        self._isolated("pod", "create", "--name", "e2e-warmup").ok()
        self._isolated("pod", "rm", "-f", "e2e-warmup").ok()

    def teardown(self) -> None:
        """Remove every container and pod, then kill what podman left (conmon, pause process)."""
        for args in (("pod", "rm", "-af", "-t", "0"), ("rm", "-af", "-t", "0")):
            try:
                self(None, *args, timeout=120)
            except AssertionError:
                pass
        marked = marked_pids(self.mark)
        if self.rootless:
            # containers of rootless podman live in its pause process's user namespace
            kill_pids(userns_members(marked))
        kill_pids(descendants(marked))  # conmon and the containers below it
        for d in self.created_state_dirs:
            try:
                d.rmdir()  # only if empty: a container left there is a failure worth seeing
            except OSError:
                pass
