"""The words container engines look for in a runtime's error text, and who looks for them.

Engines do not only read a runtime's exit status: they search its stderr (or the last `msg` of
its `--log-format json` log) for fixed phrases and decide from them whether a container is
already gone, which exit code a failed start gets, or whether to retry. runc's messages carry
these phrases; pyouki's messages keep their own context (the JSON path, the container id) and
contain the same phrase, e.g. `process.args[0]: exec: "x": executable file not found in $PATH`.

Each constant names the engines that match it and where (read in their sources: containerd 1.6
and later, go-runc, moby/docker 20.10 and later, docker CLI, podman/libpod 4.x, CRI-O, conmon
2.1). A message must keep the phrase verbatim: most matches are case-sensitive substring tests.

conmon itself matches nothing: when the runtime's create/exec fails it forwards the first 8 KiB
of the runtime's stderr to podman/CRI-O over its sync pipe, and podman prefers the `msg` of the
runtime's JSON log (the whole file parsed as one object, so the error must be the only line).
go-runc matches nothing either: it returns "exit status N: <stdout+stderr>" and containerd
matches on that text.
"""

# -- the container is gone or stopped ----------------------------------------------------------

# runc's libcontainer.ErrNotRunning, printed by `kill` (init signalled on a stopped container),
# `pause`, `update`.
#  * containerd runc shim, pkg/process/utils.go checkKillError: a kill error containing it is
#    "process already finished" (errdefs.ErrNotFound): `ctr task kill`, `ctr task rm -f`, docker
#    stop/kill and CRI StopContainer then treat the task as stopped instead of failing.
#  * CRI-O internal/oci/runtime_oci.go runtimeCmd: mapped to ErrNotFound (kill, delete, stop loop).
NOT_RUNNING = "container not running"

# ESRCH's text. containerd checkKillError (lowercased match) and CRI-O runtimeCmd (crun's
# wording) treat it like NOT_RUNNING.
NO_SUCH_PROCESS = "no such process"

# CRI-O runtimeCmd: runc's "invalid process" on a rare race, mapped to ErrNotFound.
INVALID_PROCESS = "invalid process"

# containerd checkKillError: Go's os.ErrProcessDone text, "already stopped" like NOT_RUNNING.
PROCESS_FINISHED = "os: process already finished"

# runc's libcontainer.ErrNotExist, for every verb on an unknown id.
#  * moby libcontainerd/remote/client.go wrapError: "container does not exist", "not found" or
#    "no such container" make the error errdefs.NotFound (docker kill/stop/rm go on).
#  * containerd pkg/process/init.go delete: "does not exist" makes a failed `delete` a success;
#    checkKillError: "does not exist" is "no such container" (errdefs.ErrNotFound).
#  * podman libpod/oci_conmon_common.go UpdateContainerStatus: "does not exist" (or "No such
#    file") in `state`'s stderr marks the container exited.
NOT_EXIST = "container does not exist"

# runc's resume of a container that is not frozen (not matched by an engine; runc's wording).
NOT_PAUSED = "container not paused"

# runc's libcontainer.ErrExist, `create` of an id in use. No engine matches it, but operators'
# runbooks and repair scripts grep for it (a stale shim state after a daemon restart).
EXISTS = "container with given ID already exists"

# -- a process that cannot be started ------------------------------------------------------------

# Go's exec.ErrNotFound as runc words it: `exec: "NAME": executable file not found in $PATH`.
#  * moby daemon/start.go (and exec.go) translateContainerdStartErr: with the command's name in
#    the text, "executable file not found" sets the container's exit code 127.
#  * docker CLI cli/command/container/run.go runStartContainerErr: `docker run` exits 127.
#  * podman libpod getOCIRuntimeError: "executable file not found in" is ErrOCIRuntimeNotFound,
#    so `podman exec` exits 127; define.ExitCode ("not found") gives `podman run` 127.
EXEC_NOT_FOUND = "executable file not found in $PATH"

# ENOENT's text: `exec: "/x": stat /x: no such file or directory` in runc.
#  * moby translateContainerdStartErr and docker CLI runStartContainerErr: exit code 127.
#  * podman getOCIRuntimeError (ErrOCIRuntimeNotFound, 127) and define.ExitCode ("no such file").
NO_SUCH_FILE = "no such file or directory"

# EACCES's text: `exec: "/etc/passwd": permission denied` in runc (also for a directory).
#  * moby translateContainerdStartErr and docker CLI runStartContainerErr: exit code 126.
#  * podman getOCIRuntimeError: ErrOCIRuntimePermissionDenied, `podman exec`/`run` exit 126.
PERMISSION_DENIED = "permission denied"

# EPERM's text. podman getOCIRuntimeError: ErrOCIRuntimePermissionDenied (126), like EACCES.
NOT_PERMITTED = "operation not permitted"

# EISDIR's text. docker CLI runStartContainerErr (and moby since Go 1.20): exit code 126.
IS_A_DIRECTORY = "is a directory"

# ENOTDIR's text. moby translateContainerdStartErr: exit code 127 plus a hint about mounting a
# file on a directory (or the reverse).
NOT_A_DIRECTORY = "not a directory"


def exec_error(name: str, reason: str) -> str:
    """runc's words for an executable that cannot be run: `exec: "NAME": REASON`."""
    return f'exec: "{name}": {reason}'
