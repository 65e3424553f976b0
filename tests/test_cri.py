"""The Kubernetes path: kubelet's CRI calls -> containerd's CRI plugin -> runc shim -> runtime.

A private containerd 1.6 with its CRI plugin serves two runtime handlers, ``pyouki`` and
``runc`` (``runtime_type = "io.containerd.runc.v2"`` with ``BinaryName``, as a node's config
does for a RuntimeClass); every scenario runs once per handler. The tests speak CRI gRPC
(runtime.v1) through the client in :mod:`e2e.cri`. Pods use the host network (no CNI) and a
locally built pause image.

On exit CRI deletes the task, which makes the shim call ``kill --all ID 9`` on a stopped
container: runc answers 0, and so must pyouki, or every exited container stays RUNNING and
every stop fails (issue 10).
"""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e.cri import CRI_NAMESPACE, PAUSE_CMD, PAUSE_IMAGE, Cri, CriContainerd, free_port, stream_exec
from e2e.image import IMAGE, image_archive
from e2e.proc import BASE_PATH, existing_cgroups, sweep_cgroups, wait_for
from e2e.runtimes import Runtime
from e2e.session import Session
from harness import detach_mounts_under

pytest_plugins = ["e2e.fixtures"]

grpc = pytest.importorskip("grpc", reason="grpcio is missing: pip install -e .[dev]")
pytest.importorskip("grpc_tools", reason="grpcio-tools is missing: pip install -e .[dev]")

# Every pod's cgroup parent: removed at the end of the module unless it existed before.
CGROUP_PARENT = "pyouki-e2e-cri"
# A loop that exits 3 on SIGTERM (the grace path of StopContainer).
TERM_TRAP = "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.1; done"
# A loop that ignores SIGTERM: StopContainer must escalate to SIGKILL after the timeout.
TERM_IGNORED = "trap '' TERM; echo ready; while :; do sleep 0.1; done"
# CRI's log line: RFC3339Nano timestamp, stream, tag (F full, P partial), content.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(Z|[+-]\d\d:\d\d) (stdout|stderr) ([FP]) (.*)$")


@pytest.fixture(scope="module")
def cri(e2e: Session) -> Iterator[tuple[CriContainerd, Cri]]:
    """containerd with the CRI plugin, both handlers, the busybox and pause images in k8s.io."""
    if not shutil.which("containerd", path=BASE_PATH) or not shutil.which("ctr", path=BASE_PATH):
        pytest.skip("containerd is missing: install the containerd package (tests/e2e/APT_PACKAGES)")
    had = existing_cgroups([CGROUP_PARENT])
    ct = CriContainerd(base=e2e.short / "cri", mark=f"{e2e.mark}-cri", namespace=CRI_NAMESPACE,
                       runtimes=e2e.runtimes, stream_port=free_port())
    client = None
    try:
        ct.start()
        pause = image_archive(e2e.rootfs_tar, e2e.dir / "pause-image.tar", PAUSE_IMAGE, cmd=PAUSE_CMD)
        for archive in (e2e.archive, pause):
            ct.ctr("image", "import", str(archive)).ok()
        client = Cri(ct.address)
        try:
            version = client.call("Version", version="v1")
        except grpc.RpcError as e:  # e.g. the CRI plugin did not load: its reason is in the log
            raise AssertionError(f"CRI does not answer: {e}\n{(ct.base / 'containerd.log').read_text()[-4000:]}") from e
        assert version.runtime_api_version == "v1", version

        def images() -> bool:  # CRI learns about imported images from containerd's events
            tags = {t for i in client.call("ListImages").images for t in i.repo_tags}
            return {IMAGE, PAUSE_IMAGE} <= tags

        assert wait_for(images, 20.0), f"CRI does not list the imported images:\n{client.call('ListImages')}"
        yield ct, client
    finally:
        if client is not None:
            client.close()
        ct.stop()
        detach_mounts_under(ct.base)
        left = sweep_cgroups([CGROUP_PARENT], had)
        assert not left, f"cgroups left behind: {left}"


@dataclass
class Pod:
    """One pod sandbox and what is needed to create containers in it."""

    cri: Cri
    id: str
    config: Any
    logs: Path
    handler: str

    def container(self, name: str, *cmd: str, start: bool = True, resources: dict[str, int] | None = None,
                  pid_mode: int | None = None, security: dict[str, Any] | None = None) -> str:
        """Create (and start) a container running ``cmd`` in this pod; its log is ``<logs>/<name>.log``.

        ``resources`` and ``security`` are LinuxContainerResources and LinuxContainerSecurityContext fields.
        """
        api = self.cri.api
        linux = api.LinuxContainerConfig(resources=api.LinuxContainerResources(**(resources or {})),
                                         security_context=api.LinuxContainerSecurityContext(**(security or {})))
        if pid_mode is not None:
            linux.security_context.namespace_options.pid = pid_mode
        cfg = api.ContainerConfig(
            metadata=api.ContainerMetadata(name=name), image=api.ImageSpec(image=IMAGE),
            command=list(cmd), log_path=f"{name}.log", linux=linux,
        )
        cid = self.cri.call("CreateContainer", pod_sandbox_id=self.id, config=cfg, sandbox_config=self.config)
        if start:
            self.cri.call("StartContainer", container_id=cid.container_id)
        return str(cid.container_id)

    def status(self, cid: str, verbose: bool = False) -> Any:
        """The container's ContainerStatus (and info, when verbose) response."""
        return self.cri.call("ContainerStatus", container_id=cid, verbose=verbose)

    def wait_exited(self, cid: str, timeout: float = 20.0) -> Any:
        """Wait until the container is EXITED and return its status."""
        exited = self.cri.api.CONTAINER_EXITED

        def check() -> Any:
            st = self.status(cid).status
            return st if st.state == exited else None

        st = wait_for(check, timeout)
        assert st is not None, f"{self.handler}: container still not exited after {timeout} s:\n{self.status(cid)}"
        return st

    def wait_log(self, name: str, text: str, timeout: float = 20.0) -> None:
        """Wait until container ``name``'s CRI log holds ``text`` (e.g. a trap is installed)."""
        log = self.logs / f"{name}.log"
        found = wait_for(lambda: log.exists() and text in log.read_text(), timeout, 0.05)
        assert found, f"{self.handler}: {text!r} never appeared in {log}"

    def pid(self, cid: str) -> int:
        """The container's init pid on the host (from CRI's verbose info)."""
        return int(json.loads(self.status(cid, verbose=True).info["info"])["pid"])


@pytest.fixture
def new_pod(cri: tuple[CriContainerd, Cri], rt: Runtime, e2e: Session) -> Iterator[Callable[..., Pod]]:
    """``new_pod(pid=POD)``: run a host-network pod sandbox with handler ``rt``; removed afterwards."""
    ct, client = cri
    made: list[Pod] = []

    def make(pid: int | None = None) -> Pod:
        api = client.api
        name = f"p-{uuid.uuid4().hex[:8]}"
        logs = e2e.dir / "cri-logs" / name
        logs.mkdir(parents=True)
        ns = api.NamespaceOption(network=api.NODE, pid=api.CONTAINER if pid is None else pid, ipc=api.POD)
        config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=name, uid=uuid.uuid4().hex, namespace="pyouki"),
            log_directory=str(logs),
            linux=api.LinuxPodSandboxConfig(
                cgroup_parent=f"/{CGROUP_PARENT}/{name}",
                security_context=api.LinuxSandboxSecurityContext(namespace_options=ns)),
        )
        pod_id = client.call("RunPodSandbox", config=config, runtime_handler=rt.name).pod_sandbox_id
        pod = Pod(cri=client, id=pod_id, config=config, logs=logs, handler=rt.name)
        made.append(pod)
        return pod

    yield make
    for pod in made:
        for rpc in ("StopPodSandbox", "RemovePodSandbox"):
            try:
                client.call(rpc, deadline=20.0, pod_sandbox_id=pod.id)  # a broken runtime can hang them
            except grpc.RpcError:
                pass  # the test already failed (or removed it): the module's teardown sweeps


def test_pod_sandbox_lifecycle(cri: tuple[CriContainerd, Cri], new_pod: Callable[..., Pod], rt: Runtime) -> None:
    ct, client = cri
    api = client.api
    pod = new_pod()
    st = client.call("PodSandboxStatus", pod_sandbox_id=pod.id).status
    assert st.state == api.SANDBOX_READY and st.runtime_handler == rt.name, st
    # the handler's shim ran this runtime: its --root holds the sandbox's state dir
    assert (Path(ct.runc_root(rt)) / CRI_NAMESPACE / pod.id).is_dir()
    client.call("StopPodSandbox", pod_sandbox_id=pod.id)
    assert client.call("PodSandboxStatus", pod_sandbox_id=pod.id).status.state == api.SANDBOX_NOTREADY
    client.call("StopPodSandbox", pod_sandbox_id=pod.id)  # idempotent
    client.call("RemovePodSandbox", pod_sandbox_id=pod.id)
    with pytest.raises(grpc.RpcError) as err:
        client.call("PodSandboxStatus", pod_sandbox_id=pod.id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert not (Path(ct.runc_root(rt)) / CRI_NAMESPACE / pod.id).exists()


def test_container_exit_code(new_pod: Callable[..., Pod]) -> None:
    pod = new_pod()
    cid = pod.container("exits", "sh", "-c", "exit 42")
    st = pod.wait_exited(cid)
    assert st.exit_code == 42 and st.reason == "Error", st
    # both set (no order: containerd stamps started_at after Start returns, a fast exit can precede it)
    assert st.finished_at > 0 and st.started_at > 0
    ok = pod.container("exits0", "true")
    st = pod.wait_exited(ok)
    assert st.exit_code == 0 and st.reason == "Completed", st
    for c in (cid, ok):
        pod.cri.call("RemoveContainer", container_id=c)
    with pytest.raises(grpc.RpcError):
        pod.status(cid)


def test_stop_with_grace_period(new_pod: Callable[..., Pod]) -> None:
    pod = new_pod()
    cid = pod.container("graceful", "sh", "-c", TERM_TRAP)
    pod.wait_log("graceful", "ready")  # the trap is in place
    assert pod.status(cid).status.state == pod.cri.api.CONTAINER_RUNNING
    t0 = time.monotonic()
    pod.cri.call("StopContainer", container_id=cid, timeout=10)
    assert time.monotonic() - t0 < 8, "SIGTERM was not delivered: StopContainer waited for the grace period"
    st = pod.status(cid).status
    assert st.state == pod.cri.api.CONTAINER_EXITED and st.exit_code == 3, st
    assert "got-term" in (pod.logs / "graceful.log").read_text()
    pod.cri.call("StopContainer", container_id=cid, timeout=10)  # idempotent
    pod.cri.call("RemoveContainer", container_id=cid)


def test_stop_escalates_to_sigkill(new_pod: Callable[..., Pod]) -> None:
    pod = new_pod()
    cid = pod.container("stubborn", "sh", "-c", TERM_IGNORED)
    pod.wait_log("stubborn", "ready")  # SIGTERM is ignored from now on
    t0 = time.monotonic()
    pod.cri.call("StopContainer", container_id=cid, timeout=2)
    took = time.monotonic() - t0
    st = pod.status(cid).status
    assert st.state == pod.cri.api.CONTAINER_EXITED and st.exit_code == 137, st
    assert 1.5 < took < 15, f"StopContainer took {took:.1f} s for a 2 s grace period"


def test_exec_sync(new_pod: Callable[..., Pod]) -> None:
    pod = new_pod()
    cid = pod.container("target", "sleep", "inf")
    r = pod.cri.call("ExecSync", container_id=cid, cmd=["sh", "-c", "echo out-$((6*7)); echo err >&2; exit 7"],
                     timeout=30)
    assert (r.stdout, r.stderr, r.exit_code) == (b"out-42\n", b"err\n", 7), r
    r = pod.cri.call("ExecSync", container_id=cid, cmd=["cat", "/proc/self/cgroup"], timeout=30)
    assert r.exit_code == 0
    # probes run this way, again and again: the container keeps running
    assert pod.status(cid).status.state == pod.cri.api.CONTAINER_RUNNING


def test_logs(new_pod: Callable[..., Pod]) -> None:
    pod = new_pod()
    cid = pod.container("chatty", "sh", "-c", "echo to-stdout; echo to-stderr >&2; printf no-newline")
    pod.wait_exited(cid)
    st = pod.status(cid).status
    assert st.log_path == str(pod.logs / "chatty.log")
    lines = Path(st.log_path).read_text().splitlines()
    parsed = [m.groups()[1:] for m in map(LOG_LINE.match, lines) if m]
    assert len(parsed) == len(lines), f"not CRI log lines: {lines}"
    assert ("stdout", "F", "to-stdout") in parsed and ("stderr", "F", "to-stderr") in parsed, parsed
    assert ("stdout", "P", "no-newline") in parsed, parsed


def test_container_stats(new_pod: Callable[..., Pod]) -> None:
    pod = new_pod()
    # burn a little CPU and hold some memory, then idle
    cid = pod.container("busy", "sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; x=$(head -c 4000000 "
                                            "/dev/zero | tr '\\0' a); sleep inf")
    time.sleep(1.0)
    stats = pod.cri.call("ContainerStats", container_id=cid).stats
    assert stats.attributes.id == cid and stats.attributes.metadata.name == "busy"
    assert stats.cpu.timestamp > 0 and stats.cpu.usage_core_nano_seconds.value > 0, stats
    assert stats.memory.working_set_bytes.value > 0 or stats.memory.usage_bytes.value > 0, stats


def _cgroup_file(pid: int, controller: str, name: str) -> str:
    """``<controller>/<the pid's cgroup>/<name>`` read on the host (cgroup v1)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(","):
            mount = "cpu,cpuacct" if controller in ("cpu", "cpuacct") else controller
            base = Path("/sys/fs/cgroup") / mount
            if not base.exists():
                base = Path("/sys/fs/cgroup") / controller
            return (base / path.lstrip("/") / name).read_text().strip()
    raise AssertionError(f"pid {pid} has no {controller} cgroup")


def test_update_container_resources(new_pod: Callable[..., Pod]) -> None:
    pod = new_pod()
    mib = 1024 * 1024
    cid = pod.container("resized", "sleep", "inf", resources={"memory_limit_in_bytes": 256 * mib})
    pid = pod.pid(cid)
    # the runtime put it below the pod's cgroup parent, in the cgroup the shim watches
    assert f"/{CGROUP_PARENT}/" in Path(f"/proc/{pid}/cgroup").read_text()
    assert _cgroup_file(pid, "memory", "memory.limit_in_bytes") == str(256 * mib)
    api = pod.cri.api
    pod.cri.call("UpdateContainerResources", container_id=cid,
                 linux=api.LinuxContainerResources(memory_limit_in_bytes=128 * mib, cpu_period=100000,
                                                   cpu_quota=50000, cpu_shares=512))
    assert _cgroup_file(pid, "memory", "memory.limit_in_bytes") == str(128 * mib)
    assert _cgroup_file(pid, "cpu", "cpu.cfs_quota_us") == "50000"
    assert _cgroup_file(pid, "cpu", "cpu.shares") == "512"
    res = pod.status(cid).status.resources.linux
    assert res.memory_limit_in_bytes == 128 * mib and res.cpu_quota == 50000, res
    assert pod.status(cid).status.state == api.CONTAINER_RUNNING


def test_oom_killed(new_pod: Callable[..., Pod]) -> None:
    pod = new_pod()
    mib = 1024 * 1024
    # dd allocates (and fills) a 96 MiB buffer in a 32 MiB cgroup: the kernel's OOM killer ends it
    cid = pod.container("hog", "dd", "if=/dev/zero", "of=/dev/null", "bs=96M", "count=1",
                        resources={"memory_limit_in_bytes": 32 * mib, "memory_swap_limit_in_bytes": 32 * mib})
    st = pod.wait_exited(cid, timeout=30)
    assert st.exit_code == 137 and st.reason == "OOMKilled", st


def test_shared_pid_namespace(new_pod: Callable[..., Pod]) -> None:
    pod = new_pod(pid=0)  # NamespaceMode POD: every container shares the sandbox's pid namespace
    api = pod.cri.api
    pod.container("first", "sleep", "1234", pid_mode=api.POD)
    second = pod.container("second", "sleep", "inf", pid_mode=api.POD)
    r = pod.cri.call("ExecSync", container_id=second, cmd=["ps", "-o", "pid,args"], timeout=30)
    out = r.stdout.decode()
    assert r.exit_code == 0, r
    assert "sleep 1234" in out, out
    # pid 1 is the sandbox's pause process, not the container's own command
    pid1 = pod.cri.call("ExecSync", container_id=second, cmd=["cat", "/proc/1/cmdline"], timeout=30).stdout
    assert pid1.split(b"\0")[:2] == [c.encode() for c in PAUSE_CMD], pid1


def test_exec_streaming(new_pod: Callable[..., Pod]) -> None:
    pod = new_pod()
    cid = pod.container("target", "sleep", "inf")
    url = pod.cri.call("Exec", container_id=cid, cmd=["sh", "-c", "echo streamed; echo oops >&2; exit 5"],
                       stdout=True, stderr=True).url
    r = stream_exec(url)
    assert (r.stdout, r.stderr, r.exit_code) == (b"streamed\n", b"oops\n", 5), r
    url = pod.cri.call("Exec", container_id=cid, cmd=["true"], stdout=True).url
    assert stream_exec(url).exit_code == 0


def test_security_context(new_pod: Callable[..., Pod]) -> None:
    pod = new_pod()
    api = pod.cri.api
    cid = pod.container("locked", "sleep", "inf", security={
        "run_as_user": api.Int64Value(value=65534), "readonly_rootfs": True, "no_new_privs": True})
    r = pod.cri.call("ExecSync", container_id=cid, timeout=30, cmd=[
        "sh", "-c", "id -u; grep -E '^(NoNewPrivs|CapEff)' /proc/self/status; touch /x 2>/dev/null || echo ro"])
    lines = r.stdout.decode().split("\n")
    assert r.exit_code == 0 and lines[0] == "65534", r
    assert "NoNewPrivs:\t1" in lines and "CapEff:\t0000000000000000" in lines, r
    assert "ro" in lines, r
