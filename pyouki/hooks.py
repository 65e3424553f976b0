"""OCI hooks (config.md, POSIX-platform Hooks): programs run at points of the lifecycle.

Each hook gets the container's state as JSON on stdin, its own args and an optional timeout.
Like runc (whose Go hooks leave exec.Cmd.Env nil), a hook without `env` inherits the
environment of the process that runs it: the runtime's for the runtime-namespace hooks, the
container process's for createContainer and startContainer (runc runs them in its init, whose
environment is process.env by then); `"env": []` is an empty environment. The hooks of
`create` and `start` run in the bundle directory (runc chdirs there), createContainer in the
rootfs, startContainer in process.cwd, poststop where `delete` was called. A failing hook is
an error naming it by JSON path, except poststop, whose failures are only warnings
(runtime.md, Lifecycle step 13).
"""

from __future__ import annotations

import os

from pyouki.errors import ConfigError, PyoukiError, reason

# the longest timeout the wait can express: poll(2) takes milliseconds in an int (about 24 days)
MAX_TIMEOUT = 2**31 // 1000 - 1
PHASES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")


def validate(config: dict) -> None:
    """Check the hooks object: every entry has an absolute path, string args/env, a positive timeout."""
    hooks = config.get("hooks")
    if hooks is None:
        return
    if not isinstance(hooks, dict):
        raise ConfigError("hooks", "must be an object")
    for phase in PHASES:
        entries = hooks.get(phase) or []
        if not isinstance(entries, list):
            raise ConfigError(f"hooks.{phase}", "must be an array")
        for i, hook in enumerate(entries):
            field = f"hooks.{phase}[{i}]"
            if not isinstance(hook, dict):
                raise ConfigError(field, "must be an object")
            path = hook.get("path")
            if not isinstance(path, str) or not path.startswith("/"):
                raise ConfigError(f"{field}.path", "must be an absolute path")
            for key in ("args", "env"):
                value = hook.get(key)
                if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
                    raise ConfigError(f"{field}.{key}", "must be an array of strings")
            timeout = hook.get("timeout")
            if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0):
                raise ConfigError(f"{field}.timeout", "must be a positive integer")
            if timeout is not None and timeout > MAX_TIMEOUT:
                raise ConfigError(f"{field}.timeout", f"must be at most {MAX_TIMEOUT} seconds")


def has(config: dict, *phases: str) -> bool:
    """Whether the config has a hook for any of the phases."""
    hooks = config.get("hooks") or {}
    return any(hooks.get(p) for p in phases)


# phases whose hooks run in the bundle directory when the caller gives no cwd (runc's create and
# start chdir to the bundle; delete does not)
_IN_BUNDLE = ("prestart", "createRuntime", "poststart")


def run(config: dict, phase: str, state: dict, *, cwd: str | None = None,
        env: dict[str, str] | None = None) -> None:
    """Run the hooks of one phase in order; raise PyoukiError for the first that fails.

    ``env`` is the environment of hooks that have no `env` of their own (None: this process's);
    ``cwd`` their working directory (None: the bundle for create's and start's hooks, else ours).
    """
    import subprocess

    from pyouki.jsonout import dumps

    payload = dumps(state).encode()
    if cwd is None and phase in _IN_BUNDLE:
        cwd = state.get("bundle") or None
    for i, hook in enumerate((config.get("hooks") or {}).get(phase) or []):
        field = f"hooks.{phase}[{i}]"
        path = hook["path"]
        args = hook.get("args") or [path]
        own_env = hook.get("env")
        hook_env = env if own_env is None else dict(item.partition("=")[::2] for item in own_env)
        try:
            result = subprocess.run(args, executable=path, input=payload, env=hook_env, cwd=cwd,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=hook.get("timeout"),
                                    close_fds=True)
        except subprocess.TimeoutExpired:
            raise PyoukiError(f"{field}: hook {path} timed out after {hook['timeout']} s") from None
        except OSError as e:
            raise PyoukiError(f"{field}: failed to run hook {path}: {reason(e)}") from None
        if result.returncode != 0:
            lines = result.stderr.decode(errors="replace").strip().splitlines()
            detail = f": {lines[-1].rstrip('.')}" if lines else ""
            status = (f"exit status {result.returncode}" if result.returncode > 0
                      else f"signal {-result.returncode}")
            raise PyoukiError(f"{field}: hook {path} failed with {status}{detail}")


def run_poststop(config: dict, state: dict) -> None:
    """poststop: failures are logged as warnings and the rest go on."""
    from pyouki import log

    for i, hook in enumerate((config.get("hooks") or {}).get("poststop") or []):
        single = {"hooks": {"poststop": [hook]}}
        try:
            run(single, "poststop", state)
        except PyoukiError as e:
            message = str(e).replace("hooks.poststop[0]", f"hooks.poststop[{i}]")
            log.warning(message)
            if not log.on_stderr():  # else the line above went there already
                os.write(2, f"pyouki: warning: {message}\n".encode())
