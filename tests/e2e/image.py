"""The test image: a busybox-static rootfs tarball and one archive both docker and ctr load.

The archive holds an OCI image layout (``oci-layout``, ``index.json``, ``blobs/``) and docker's
``manifest.json`` pointing at the same blobs, so ``ctr image import`` and ``docker load`` read
it without umoci or skopeo. Podman imports the plain rootfs tarball.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

IMAGE = "localhost/bb:latest"
# What the image runs by default; PATH=/bin is all busybox needs.
IMAGE_ENV = ["PATH=/bin"]
IMAGE_CMD = ["/bin/sh"]


def rootfs_tar(rootfs: Path, dest: Path) -> Path:
    """Pack ``rootfs`` as a tarball of root-owned entries (ENGINES.md section 1)."""

    def _root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for child in sorted(rootfs.iterdir()):
            tar.add(child, arcname=child.name, filter=_root)
    return dest


def _blob(tar: tarfile.TarFile, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
    return f"sha256:{digest}", len(data)


def image_archive(layer_tar: Path, dest: Path, ref: str = IMAGE, cmd: list[str] | None = None) -> Path:
    """Write an OCI layout + docker-save archive of one uncompressed layer, tagged ``ref``.

    The image runs ``cmd`` by default (``IMAGE_CMD`` unless given).
    """
    layer = layer_tar.read_bytes()
    with tarfile.open(dest, "w") as tar:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        layer_digest, layer_size = _blob(tar, layer)
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": IMAGE_ENV, "Cmd": cmd or IMAGE_CMD, "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created_by": "pyouki e2e: busybox-static rootfs"}],
        }
        config_digest, config_size = _blob(tar, json.dumps(config).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest, "size": layer_size}],
        }
        manifest_digest, manifest_size = _blob(tar, json.dumps(manifest).encode())
        index = {
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest, "size": manifest_size,
                "annotations": {"io.containerd.image.name": ref,
                                "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1]},
            }],
        }
        docker_manifest = [{
            "Config": f"blobs/sha256/{config_digest.split(':')[1]}",
            "RepoTags": [ref],
            "Layers": [f"blobs/sha256/{layer_digest.split(':')[1]}"],
        }]
        for name, obj in (("oci-layout", {"imageLayoutVersion": "1.0.0"}), ("index.json", index),
                          ("manifest.json", docker_manifest)):
            data = json.dumps(obj).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return dest
