"""The runtimes the engines drive, named the way the engines need.

Both runtimes are reached through one directory of symlinks, ``<session>/runtimes/``:

* ``pyouki`` -> the pyouki under test (``PYOUKI_E2E_PYOUKI``, default the venv's ``pyouki``);
* ``runc``   -> ``/usr/sbin/runc`` (the harness's self-check).

Podman picks global flags by the runtime's basename (ENGINES.md): names in
``runtime_supports_json`` get ``--log-format=json --log FILE`` and podman reports the last
``msg`` of that file on failure. The private containers.conf lists ``pyouki`` there (and in
``runtime_supports_nocgroup``) so pyouki is called exactly as runc is, under its own name,
rather than disguised as ``runc``. The directory and links are world-searchable because
rootless podman runs the runtime as the test user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

RUNTIMES = ("pyouki", "runc")


def pyouki_path() -> str:
    """The pyouki binary under test."""
    return os.environ.get("PYOUKI_E2E_PYOUKI") or str(Path(sys.executable).parent / "pyouki")


def runc_path() -> str:
    """The reference runc binary."""
    return shutil.which("runc", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/runc"


@dataclass(frozen=True)
class Runtime:
    """One runtime as the engines see it: a name and an absolute path whose basename is the name."""

    name: str
    path: str

    @property
    def is_pyouki(self) -> bool:
        """True for pyouki (runc is the reference)."""
        return self.name == "pyouki"


def make_runtime_dir(dest: Path) -> dict[str, Runtime]:
    """Create ``dest`` with one symlink per runtime and return them by name."""
    dest.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(dest, 0o755)
    out = {}
    for name, target in (("pyouki", pyouki_path()), ("runc", runc_path())):
        link = dest / name
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target)
        out[name] = Runtime(name=name, path=str(link))
    return out


_VERBS: dict[tuple[str, str], bool] = {}


def has_verb(rt: Runtime, verb: str) -> bool:
    """Whether the runtime knows ``verb`` (``RUNTIME VERB --help`` exits 0); cached."""
    key = (rt.path, verb)
    if key not in _VERBS:
        r = subprocess.run([rt.path, verb, "--help"], capture_output=True, timeout=30)
        _VERBS[key] = r.returncode == 0
    return _VERBS[key]
