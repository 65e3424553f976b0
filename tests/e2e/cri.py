"""The Kubernetes path without a kubelet: containerd's CRI plugin driven over gRPC from Python.

* :class:`CriContainerd`: a private containerd (as :class:`~e2e.containerd.Containerd`) with the
  CRI plugin enabled. Each runtime is a CRI *runtime handler* of type ``io.containerd.runc.v2``
  whose shim option ``BinaryName`` is the runtime's link, exactly what a node's config holds
  for a Kubernetes RuntimeClass (README, "Kubernetes"). No CNI: the tests use host-network
  pod sandboxes. The sandbox ("pause") image is built locally and imported into ``k8s.io``.
* :func:`load_api`: the message classes of ``cri_api.proto`` (a subset of the upstream CRI
  ``runtime.v1`` API), compiled with grpcio-tools on first use and cached by content hash.
* :class:`Cri`: a small client: one method call per RPC, by name.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from e2e.containerd import Containerd
from e2e.runtimes import Runtime

PROTO = Path(__file__).with_name("cri_api.proto")
CRI_NAMESPACE = "k8s.io"  # the containerd namespace the CRI plugin uses
PAUSE_IMAGE = "localhost/pyouki-pause:latest"
# The sandbox's only process: busybox sleep, killed by containerd with SIGKILL on StopPodSandbox.
PAUSE_CMD = ["/bin/sleep", "inf"]
IMAGE_SERVICE_METHODS = frozenset({"ListImages"})


def load_api() -> ModuleType:
    """Compile ``cri_api.proto`` to ``cri_api_pb2`` (cached) and import it.

    The cache key covers the proto text and the grpcio-tools and protobuf versions (generated
    code is checked against the protobuf runtime). Compiled in a temp dir and renamed into
    place, so concurrent runs never see half a module.
    """
    import google.protobuf
    import grpc_tools
    from grpc_tools import protoc

    text = PROTO.read_bytes()
    tools_version = getattr(grpc_tools, "__version__", "") or _dist_version("grpcio-tools")
    key = hashlib.sha256(text + f"{tools_version}/{google.protobuf.__version__}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pyouki-tests" / f"cri-{key}"
    module = cache / "cri_api_pb2.py"
    if not module.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="cri-", dir=cache.parent))
        try:
            shutil.copy(PROTO, work / PROTO.name)
            rc = protoc.main(["protoc", f"-I{work}", f"--python_out={work}", PROTO.name])
            assert rc == 0, f"protoc failed on {PROTO} ({rc})"
            (work / PROTO.name).unlink()
            try:
                os.rename(work, cache)
            except OSError:  # another run got there first
                pass
        finally:
            shutil.rmtree(work, ignore_errors=True)
    spec = importlib.util.spec_from_file_location("cri_api_pb2", module)
    assert spec is not None and spec.loader is not None
    mod = sys.modules.get("cri_api_pb2")
    if mod is None:
        mod = importlib.util.module_from_spec(spec)
        sys.modules["cri_api_pb2"] = mod
        spec.loader.exec_module(mod)
    return mod


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


class Cri:
    """A CRI client on a unix socket: ``cri.call("RunPodSandbox", config=...)``."""

    def __init__(self, address: str) -> None:
        import grpc

        self.api = load_api()
        self.channel = grpc.insecure_channel(f"unix://{address}")

    def call(self, method: str, deadline: float = 60.0, **fields: Any) -> Any:
        """Call RPC ``method`` with a ``<method>Request`` built from ``fields``; return the response.

        ``deadline`` is the gRPC call's (seconds); ``timeout`` is a request field of several RPCs.
        """
        service = "ImageService" if method in IMAGE_SERVICE_METHODS else "RuntimeService"
        req_cls = getattr(self.api, f"{method}Request")
        resp_cls = getattr(self.api, f"{method}Response")
        stub = self.channel.unary_unary(f"/runtime.v1.{service}/{method}",
                                        request_serializer=req_cls.SerializeToString,
                                        response_deserializer=resp_cls.FromString)
        return stub(req_cls(**fields), timeout=deadline)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for the streaming server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class CriContainerd(Containerd):
    """containerd with the CRI plugin: one runtime handler per runtime, host-network pods only."""

    runtimes: dict[str, Runtime] = field(default_factory=dict)
    stream_port: int = 0

    def config(self) -> str:
        """config.toml: the CRI plugin enabled, handlers named after the runtimes."""
        b = self.base
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        lines = [
            "version = 2",
            f'root = "{b}/root"',
            f'state = "{b}/state"',
            "[grpc]",
            f'  address = "{self.address}"',
            "[ttrpc]",
            f'  address = "{self.address}.ttrpc"',
            "[debug]",
            f'  address = "{b}/debug.sock"',
            '[plugins."io.containerd.internal.v1.opt"]',
            f'  path = "{b}/opt"',
            f"[{cri}]",
            f'  sandbox_image = "{PAUSE_IMAGE}"',
            # root lacks CAP_SYS_RESOURCE here: a negative oom_score_adj below ours fails
            "  restrict_oom_score_adj = true",
            '  stream_server_address = "127.0.0.1"',
            f'  stream_server_port = "{self.stream_port}"',
            "  enable_selinux = false",
            "  disable_apparmor = true",
            f"[{cri}.cni]",  # never used (host network) but kept off /etc/cni and /opt/cni
            f'  bin_dir = "{b}/cni/bin"',
            f'  conf_dir = "{b}/cni/net.d"',
            f"[{cri}.containerd]",
            f'  default_runtime_name = "{next(iter(self.runtimes))}"',
        ]
        for name, rt in self.runtimes.items():
            lines += [
                f"[{cri}.containerd.runtimes.{name}]",
                '  runtime_type = "io.containerd.runc.v2"',
                f"[{cri}.containerd.runtimes.{name}.options]",
                f'  BinaryName = "{rt.path}"',
                f'  Root = "{self.runc_root(rt)}"',
            ]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# streaming exec: the URL ``Exec`` returns, spoken as kubectl does over WebSocket
# --------------------------------------------------------------------------------------------

# The Kubernetes streaming protocol: each binary message starts with its channel number;
# v4 sends the command's end as a JSON metav1.Status on the error channel.
WS_PROTOCOL = "v4.channel.k8s.io"
STDOUT, STDERR, ERROR = 1, 2, 3


@dataclass
class StreamResult:
    """What a streaming exec produced: the bytes per channel and the final status."""

    stdout: bytes
    stderr: bytes
    status: dict[str, Any]

    @property
    def exit_code(self) -> int:
        """The command's exit code, from the v4 status (``NonZeroExitCode`` cause ``ExitCode``)."""
        if self.status.get("status") == "Success":
            return 0
        for cause in self.status.get("details", {}).get("causes", []):
            if cause.get("reason") == "ExitCode":
                return int(cause["message"])
        raise AssertionError(f"no exit code in {self.status}")


def stream_exec(url: str, timeout: float = 30.0) -> StreamResult:
    """Open ``url`` (from ``Exec`` without stdin) as a WebSocket and read every channel to the end."""
    import base64
    import json
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    assert u.scheme == "http" and u.hostname and u.port, url
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection((u.hostname, u.port), timeout=timeout) as s:
        s.sendall((f"GET {u.path}?{u.query} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                   f"Sec-WebSocket-Protocol: {WS_PROTOCOL}\r\nOrigin: http://{u.netloc}\r\n\r\n").encode())
        f = s.makefile("rb")
        head = f.readline()
        assert b" 101 " in head, f"exec stream refused: {head!r} {f.read(2000)!r}"
        while f.readline() not in (b"\r\n", b""):
            pass
        out: dict[int, bytes] = {STDOUT: b"", STDERR: b"", ERROR: b""}
        while (frame := _read_frame(f)) is not None:
            opcode, data = frame
            if opcode == 0x8:  # close
                break
            if opcode in (0x1, 0x2) and data:
                out[data[0]] = out.get(data[0], b"") + data[1:]
    status = json.loads(out[ERROR]) if out[ERROR] else {}
    return StreamResult(out[STDOUT], out[STDERR], status)


def _read_frame(f: Any) -> tuple[int, bytes] | None:
    """One server frame (never masked, never fragmented by this server), or None at EOF."""
    hdr = f.read(2)
    if len(hdr) < 2:
        return None
    n = hdr[1] & 0x7F
    if n == 126:
        n = int.from_bytes(f.read(2), "big")
    elif n == 127:
        n = int.from_bytes(f.read(8), "big")
    return hdr[0] & 0x0F, f.read(n)
