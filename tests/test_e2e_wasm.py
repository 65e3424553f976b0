"""Engines start WebAssembly containers on pyouki: podman (rootless and rootful) and ctr with the
annotation run.oci.handler=wasm, from an image that holds nothing but modules.

runc has no wasm handler, so only pyouki is driven here (the other e2e files compare both).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasm_modules as wm
from e2e.containerd import Containerd
from e2e.image import image_archive, rootfs_tar
from e2e.podman import Podman
from e2e.runtimes import Runtime
from e2e.session import Session

pytest_plugins = ["e2e.fixtures"]
pytest.importorskip("wasmtime", reason="wasmtime is not installed (pyouki's wasm extra)")

WASM_IMAGE = "localhost/wasm:latest"
ANNOTATION = "run.oci.handler=wasm"


@pytest.fixture(scope="module")
def wasm_image(e2e: Session) -> tuple[Path, Path]:
    """A scratch image's layer tarball and archive: modules in /, a data file in /etc."""
    root = e2e.dir / "wasm-rootfs"
    (root / "etc").mkdir(parents=True)
    files = {
        "hello.wat": wm.echo(),
        "exit42.wat": wm.exit_with(42),
        "trap.wat": wm.trap(),
        "cat.wat": wm.cat(3, "etc/wasm-data"),
        "tty.wat": wm.stdout_kind(linger_ms=500),
        "etc/wasm-data": "data-from-the-image\n",
    }
    for rel, text in files.items():
        (root / rel).write_text(text)
        os.chmod(root / rel, 0o755)
    (root / "hello.wasm").write_bytes(wm.wasm_binary(wm.exit_with(7)))
    (root / "bad.wasm").write_bytes(b"\0asm\x01\0\0\0garbage")
    for p in (root / "hello.wasm", root / "bad.wasm"):
        os.chmod(p, 0o755)
    tar = rootfs_tar(root, e2e.dir / "wasm-rootfs.tar")
    os.chmod(tar, 0o644)
    return tar, image_archive(tar, e2e.dir / "wasm-image.tar", WASM_IMAGE)


@pytest.fixture
def pyouki(e2e: Session) -> Runtime:
    """pyouki as the engines see it."""
    return e2e.runtimes["pyouki"]


_IMPORTED: set[str] = set()


@pytest.fixture(params=["rootless", "rootful"])
def pm(request: pytest.FixtureRequest, wasm_image: tuple[Path, Path]) -> Podman:
    """A podman set-up with the wasm image imported."""
    p: Podman = request.getfixturevalue(f"podman_{request.param}")
    if request.param not in _IMPORTED:
        tar = wasm_image[0]
        p._isolated("import", "--change", 'CMD ["/hello.wat"]', str(tar), WASM_IMAGE).ok()
        _IMPORTED.add(request.param)
    return p


@pytest.fixture
def ctrd(containerd: Containerd, wasm_image: tuple[Path, Path]) -> Iterator[Containerd]:
    """The private containerd with the wasm image imported."""
    if "containerd" not in _IMPORTED:
        containerd.ctr("image", "import", str(wasm_image[1])).ok()
        _IMPORTED.add("containerd")
    yield containerd


def test_podman_runs_a_wat_module(pm: Podman, pyouki: Runtime) -> None:
    r = pm(pyouki, "run", "--rm", "--annotation", ANNOTATION, "-e", "GREETING=hi", WASM_IMAGE,
           "/hello.wat", "a", "b c").ok()
    args, _, env = r.stdout.partition("--\n")
    assert args.splitlines() == ["/hello.wat", "a", "b c"], r
    assert "GREETING=hi" in env.splitlines(), r


def test_podman_exit_code_file_and_binary_module(pm: Podman, pyouki: Runtime) -> None:
    r = pm(pyouki, "run", "--rm", "--annotation", ANNOTATION, WASM_IMAGE, "/exit42.wat")
    assert (r.returncode, r.stdout.strip()) == (42, "exiting"), r
    r = pm(pyouki, "run", "--rm", "--annotation", "module.wasm.image/variant=compat", WASM_IMAGE, "/hello.wasm")
    assert r.returncode == 7, r
    r = pm(pyouki, "run", "--rm", "--annotation", ANNOTATION, WASM_IMAGE, "/cat.wat").ok()
    assert r.stdout == "data-from-the-image\n", r


def test_podman_trap_and_corrupt_module(pm: Podman, pyouki: Runtime) -> None:
    r = pm(pyouki, "run", "--rm", "--annotation", ANNOTATION, WASM_IMAGE, "/trap.wat")
    assert r.returncode == 134, r
    assert "wasm trap" in r.stderr and "unreachable" in r.stderr, r
    r = pm(pyouki, "run", "--rm", "--annotation", ANNOTATION, WASM_IMAGE, "/bad.wasm")
    assert r.returncode != 0, r
    # podman shows the runtime's own one-line message from its JSON log
    assert "process.args[0]: /bad.wasm is not a valid WebAssembly module" in r.stderr, r


def test_podman_run_it_gives_the_module_a_terminal(pm: Podman, pyouki: Runtime) -> None:
    r = pm(pyouki, "run", "-it", "--rm", "--annotation", ANNOTATION, WASM_IMAGE, "/tty.wat", pty=True)
    assert r.returncode == 0, r
    # around it, the pty may echo script's input (a NUL shown as ^@)
    assert r.stdout.replace("^@", " ").split() == ["tty"], r
    r = pm(pyouki, "run", "--rm", "--annotation", ANNOTATION, WASM_IMAGE, "/tty.wat").ok()
    assert r.stdout.strip() == "not-a-tty", r


def test_podman_detached_wasm_container(pm: Podman, pyouki: Runtime) -> None:
    n = f"e2e-wasm-{uuid.uuid4().hex[:8]}"
    try:
        pm(pyouki, "run", "-d", "--name", n, "--annotation", ANNOTATION, WASM_IMAGE, "/exit42.wat").ok()
        r = pm(pyouki, "wait", n).ok()
        assert r.stdout.strip() == "42", r
        assert pm(pyouki, "logs", n).ok().stdout.strip() == "exiting"
    finally:
        pm(pyouki, "rm", "-f", "-t", "0", n)


def test_ctr_runs_a_wasm_container(ctrd: Containerd, pyouki: Runtime) -> None:
    def run(*args: str) -> tuple[int, str]:
        r = ctrd.ctr("run", "--rm", "--annotation", ANNOTATION, *ctrd.run_args(pyouki), WASM_IMAGE,
                     f"e2e-wasm-{uuid.uuid4().hex[:8]}", *args)
        return r.returncode, r.stdout

    rc, out = run("/hello.wat", "x", "y")
    assert rc == 0 and out.partition("--\n")[0].splitlines() == ["/hello.wat", "x", "y"], out
    assert run("/exit42.wat") == (42, "exiting\n")
    assert run("/cat.wat") == (0, "data-from-the-image\n")
