"""pyouki.mounts.walk: paths inside a root, opened component by component on fds.

Real files in a temp dir; every symlink that could lead out points at a sibling directory of
the root inside the same temp dir, so a regression can only write there (and is caught)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pyouki.mounts import resolve, walk


def _where(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path, int]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    yield root, outside, fd
    os.close(fd)


def test_absolute_symlink_is_followed_inside_the_root(tree: tuple[Path, Path, int]) -> None:
    root, outside, fd = tree
    os.symlink(str(outside), root / "link")
    assert _where(walk(fd, "/link/made/deeper", "dir")) == str(root) + str(outside) + "/made/deeper"
    assert not (outside / "made").exists()


def test_dotdot_is_clamped_at_the_root(tree: tuple[Path, Path, int]) -> None:
    root, outside, fd = tree
    os.symlink("../../../../" + outside.name, root / "up")
    os.symlink("/opt/a/b", root / "usr")  # the planted /dev of issue 8, item 3
    os.symlink("../../../../usr/lib/../../dev", root / "dev")
    assert _where(walk(fd, "up/x", "dir")) == str(root / outside.name / "x")
    assert _where(walk(fd, "/dev/ptmx", "file")) == str(root / "opt/a/dev/ptmx")
    assert not (outside / "x").exists()


def test_missing_component_before_dotdot_is_made(tree: tuple[Path, Path, int]) -> None:
    """The kernel resolves "missing/.." to ENOENT: walk makes "missing", so that the container,
    resolving the same path with the kernel, reaches what walk reached."""
    root, _, fd = tree
    assert _where(walk(fd, "/missing/../b", "dir")) == str(root / "b")
    assert (root / "missing").is_dir()


def test_lookup_without_create_and_loops(tree: tuple[Path, Path, int]) -> None:
    root, _, fd = tree
    with pytest.raises(FileNotFoundError):
        walk(fd, "/nothing/here")
    os.symlink("b", root / "a")
    os.symlink("a", root / "b")
    with pytest.raises(OSError) as e:
        walk(fd, "/a/x", "dir")
    assert e.value.errno == errno.ELOOP
    assert _where(walk(fd, "/")) == str(root)


def test_file_is_made_empty_and_existing_kept(tree: tuple[Path, Path, int]) -> None:
    root, _, fd = tree
    assert _where(walk(fd, "/etc/resolv.conf", "file")) == str(root / "etc/resolv.conf")
    assert (root / "etc/resolv.conf").read_text() == ""
    (root / "etc/resolv.conf").write_text("kept")
    os.close(walk(fd, "/etc/resolv.conf", "file"))
    assert (root / "etc/resolv.conf").read_text() == "kept"


def test_resolve_names_what_walk_reaches(tree: tuple[Path, Path, int]) -> None:
    """resolve() is runc's SecureJoin inside the root: the path that walk() would reach, made
    or not, with nothing created (criu's keys for mounts whose destination has a symlink)."""
    root, outside, fd = tree
    (root / "etc").mkdir()
    os.symlink("/run/systemd/resolve/stub-resolv.conf", root / "etc/resolv.conf")  # dangling, as in images
    os.symlink("../../../../" + outside.name, root / "up")
    os.symlink(str(outside), root / "abs")
    os.symlink("etc", root / "cfg")
    cases = ["/etc/resolv.conf", "up/x", "/abs/y/../z", "/missing/../cfg/hosts", "/etc/../../a//b/./c",
             "/cfg", "/"]
    resolved = [resolve(fd, p) for p in cases]
    assert resolved == ["/run/systemd/resolve/stub-resolv.conf", f"/{outside.name}/x", f"{outside}/z",
                        "/etc/hosts", "/a/b/c", "/etc", "/"]
    assert sorted(p.name for p in root.iterdir()) == ["abs", "cfg", "etc", "up"]  # nothing made
    for path, want in zip(cases[:5], resolved, strict=False):  # walk reaches the same places
        assert _where(walk(fd, path, "file")) == str(root) + want
