"""Writing a child's uid/gid maps: directly when the kernel allows it, else via newuidmap/newgidmap.

An unprivileged process may write one mapping of its own id (and, for gids, only after writing
"deny" to setgroups); anything else needs the setuid helpers, which check /etc/subuid and
/etc/subgid. Root in the initial user namespace, and root in a user namespace (rootless podman),
can write any mapping its own namespace covers.
"""

from __future__ import annotations

import os

from pyouki.errors import PyoukiError, reason

HELPER_DIRS = ("/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin")


def format_map(mappings: list[dict]) -> str:
    """The uid_map/gid_map text for OCI mappings (containerID hostID size per line)."""
    return "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n" for m in mappings)


def needs_helper(mappings: list[dict], own_id: int) -> bool:
    """True when an unprivileged caller cannot write these mappings itself."""
    if os.geteuid() == 0:
        return False
    return not (len(mappings) == 1 and mappings[0]["hostID"] == own_id and mappings[0]["size"] == 1)


def find_helper(name: str) -> str:
    """Locate newuidmap/newgidmap; engines may call us with an empty PATH."""
    dirs = [d for d in os.environ.get("PATH", "").split(":") if d] + list(HELPER_DIRS)
    for d in dirs:
        path = os.path.join(d, name)
        if os.access(path, os.X_OK):
            return path
    raise PyoukiError(f"{name} not found: install the uidmap package to map more than your own id")


def _run_helper(name: str, pid: int, mappings: list[dict], field: str) -> None:
    import subprocess

    argv = [find_helper(name), str(pid)]
    for m in mappings:
        argv += [str(m["containerID"]), str(m["hostID"]), str(m["size"])]
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        out = result.stdout.decode(errors="replace").strip().splitlines()
        detail = out[-1].rstrip(".") if out else f"exit status {result.returncode}"  # a line of ours: no period
        raise PyoukiError(f"{field}: {name} failed: {detail}")


def _write(path: str, text: str, field: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise PyoukiError(f"{field}: failed to write {path}: {reason(e)}") from None


def write_mappings(pid: int, uid_maps: list[dict], gid_maps: list[dict]) -> bool:
    """Map ids for the user namespace of pid; return whether setgroups stays allowed inside."""
    setgroups_allowed = True
    if gid_maps:
        if needs_helper(gid_maps, os.getegid()):
            _run_helper("newgidmap", pid, gid_maps, "linux.gidMappings")
        else:
            if os.geteuid() != 0:
                # the kernel demands this before an unprivileged process writes gid_map
                _write(f"/proc/{pid}/setgroups", "deny", "linux.gidMappings")
                setgroups_allowed = False
            _write(f"/proc/{pid}/gid_map", format_map(gid_maps), "linux.gidMappings")
    if uid_maps:
        if needs_helper(uid_maps, os.geteuid()):
            _run_helper("newuidmap", pid, uid_maps, "linux.uidMappings")
        else:
            _write(f"/proc/{pid}/uid_map", format_map(uid_maps), "linux.uidMappings")
    return setgroups_allowed
