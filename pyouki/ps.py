"""`ps`: the processes of a container, as the JSON array of pids the containerd shim reads, or as
the lines of the host's `ps` output that belong to the container (like runc)."""

from __future__ import annotations

from pyouki.errors import PyoukiError, reason
from pyouki.lifecycle import container_pids, load


def pids(root: str, container_id: str) -> list[int]:
    """Host pids of every process of the container (empty once it has stopped)."""
    container = load(root, container_id)
    if container.status() == "stopped":
        return []
    return container_pids(container)


def ps_table(root: str, container_id: str, ps_args: list[str]) -> str:
    """Run ps with ps_args (default -ef) and keep its header and the container's lines."""
    wanted = set(pids(root, container_id))
    output = _run_ps(ps_args or ["-ef"])
    lines = output.split("\n")
    column = pid_column(lines[0])
    kept = [lines[0]]
    for line in lines[1:]:
        fields = line.split()
        if len(fields) <= column:
            continue
        try:
            if int(fields[column]) in wanted:
                kept.append(line)
        except ValueError:
            continue
    return "\n".join(kept) + "\n"


def pid_column(header: str) -> int:
    """The index of the PID column in a ps header line."""
    try:
        return header.split().index("PID")
    except ValueError:
        raise PyoukiError(f"ps: couldn't find PID field in ps output header {header.strip()!r}") from None


def _run_ps(args: list[str]) -> str:
    import os
    import shutil
    import subprocess

    # engines may call us with an almost empty environment: find ps without PATH too
    exe = shutil.which("ps") or next((p for p in ("/bin/ps", "/usr/bin/ps") if os.access(p, os.X_OK)), None)
    if exe is None:
        raise PyoukiError("ps: the ps command was not found (install procps)")
    try:
        proc = subprocess.run([exe, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              check=False)
    except OSError as e:
        raise PyoukiError(f"ps: failed to run {exe}: {reason(e)}") from None
    text = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        detail = " ".join(text.split())
        raise PyoukiError(f"ps: {exe} {' '.join(args)} exited with status {proc.returncode}: {detail}")
    return text
