"""Unit tests (pure logic) of pyouki/criu.py; checkpoint/restore itself runs in the VM tier
(tests/test_vm_enforcement.py: criu cannot dump on this host's kernel)."""

from __future__ import annotations

from pyouki.criu import _bind_mounts


def test_bind_mount_keys_are_the_container_paths_criu_sees() -> None:
    """criu matches `--external mnt[KEY]` against the mount's path in the container's
    mountinfo: one leading slash. normpath("/" + "/etc/hostname") is "//etc/hostname" (POSIX
    keeps two), which matched no mount, and criu failed on podman's file binds."""
    config = {"mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/etc/hostname", "type": "bind", "source": "/u/hostname", "options": ["bind", "rprivate"]},
        {"destination": "/run/.containerenv", "type": "none", "source": "/u/env", "options": ["rbind"]},
        {"destination": "data//sub/", "source": "rel", "options": ["bind"]},
        {"destination": "//twice/../x", "type": "bind", "source": "/s"},
    ]}
    assert _bind_mounts(config) == [("/etc/hostname", "/u/hostname"), ("/run/.containerenv", "/u/env"),
                                    ("/data/sub", "rel"), ("/x", "/s")]
