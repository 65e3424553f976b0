"""The session object the engine fixtures share, and the ``needs`` fixture's type.

Kept apart from :mod:`e2e.fixtures` so test modules can import these types without importing
the plugin module itself (pytest must import that one first to rewrite its asserts).
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import TestUser

from e2e.proc import BASE_PATH, run
from e2e.runtimes import Runtime

# the ``needs`` fixture's type, for test signatures
Needs = Callable[..., None]


@dataclass
class Session:
    """Everything the engine fixtures share."""

    dir: Path
    short: Path  # a short path for XDG_RUNTIME_DIRs and sockets (length limits)
    mark: str
    user: TestUser
    runtimes: dict[str, Runtime]
    rootfs_tar: Path
    archive: Path
    rootfs: Path

    def runtime_error(self, rt: Runtime, *args: str) -> str:
        """The one-line message ``rt`` itself gives when ``create`` fails for process ``args``.

        Computed by running the runtime directly (as root, JSON log like the engines ask for),
        so the engine tests can check that each engine shows the runtime's own words.
        """
        work = Path(tempfile.mkdtemp(prefix=f"direct-{rt.name}-", dir=self.dir))
        bundle = work / "bundle"
        bundle.mkdir()
        env = {"PATH": BASE_PATH, "HOME": "/root", "PYOUKI_E2E_MARK": f"{self.mark}-direct"}
        run([rt.path, "spec"], env=env, cwd=bundle).ok()
        config = json.loads((bundle / "config.json").read_text())
        config["root"] = {"path": str(self.rootfs), "readonly": True}
        config["process"].update(terminal=False, args=list(args))
        (bundle / "config.json").write_text(json.dumps(config))
        root, log, cid = work / "state", work / "log.json", f"direct-{uuid.uuid4().hex[:8]}"
        r = run([rt.path, "--root", str(root), "--log", str(log), "--log-format", "json",
                 "create", "--bundle", str(bundle), cid], env=env, cwd=bundle)
        run([rt.path, "--root", str(root), "delete", "--force", cid], env=env, cwd=bundle)
        assert r.returncode != 0, f"{rt.name} create of {args} succeeded:\n{r}"
        msgs = [json.loads(line).get("msg", "") for line in log.read_text().splitlines() if line.strip()]
        msgs = [m for m in msgs if m]
        assert msgs, f"{rt.name} logged no message:\n{r}"
        return msgs[-1]
