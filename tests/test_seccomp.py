"""Tests for pyouki.seccomp: config validation, and real filters loaded into forked children."""

from __future__ import annotations

import copy
import ctypes
import errno
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyouki.errors import ConfigError, PyoukiError
from pyouki.seccomp import SeccompFilter, compile_filter, validate

CLIENTS = Path(__file__).resolve().parent / "fixtures" / "clients"  # configs captured from real engines
PODMAN_CONFIG = CLIENTS / "podman-rootful-config.json"
REPO = Path(__file__).resolve().parent.parent

PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
NOBODY = 65534
ADDR_NO_RANDOMIZE = 0x0040000
CLONE_NEWUSER = 0x10000000

_libc = ctypes.CDLL(None, use_errno=True)

is_root = os.geteuid() == 0
needs_root = pytest.mark.skipif(not is_root, reason="needs root (to load without no_new_privs)")


def podman_seccomp() -> dict[str, Any]:
    """The seccomp profile podman 4.3 hands to the runtime (docker's default, errnoRet 38)."""
    with open(PODMAN_CONFIG) as f:
        return json.load(f)["linux"]["seccomp"]


def _prctl(option: int, arg: int = 0) -> int:
    res = _libc.prctl(option, arg, 0, 0, 0)
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(res)


class Child:
    """How a forked child ended: its wait status and what it wrote to the result pipe."""

    def __init__(self, status: int, output: str) -> None:
        self.status = status
        self.output = output

    @property
    def signal(self) -> int | None:
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None

    @property
    def exit_code(self) -> int | None:
        return os.WEXITSTATUS(self.status) if os.WIFEXITED(self.status) else None


def run_child(body: Callable[[Callable[[str], None]], None], *, user: str, nnp: bool | None = None) -> Child:
    """Fork; in the child become `user` ("root" or "nobody"), maybe set no_new_privs, run body.

    By default only an unprivileged child sets no_new_privs: root loads with CAP_SYS_ADMIN, as
    the init does when process.noNewPrivileges is false.

    body gets a `report(text)` function that writes to a pipe the parent reads; an exception in
    the child is reported as "EXC <type>: <message>" and exit code 70.
    """
    if nnp is None:
        nnp = user != "root"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which never returns to pytest
        code = 0
        try:
            os.close(r)
            os.chdir("/")
            # A SIGSYS kill would otherwise leave a core file behind.
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if user == "nobody" and os.geteuid() == 0:
                os.setgroups([])
                os.setresgid(NOBODY, NOBODY, NOBODY)
                os.setresuid(NOBODY, NOBODY, NOBODY)
            _prctl(PR_SET_DUMPABLE, 0)
            if nnp:
                _prctl(PR_SET_NO_NEW_PRIVS, 1)

            def report(text: str) -> None:
                os.write(w, text.encode() + b"\n")

            body(report)
        except BaseException as exc:  # noqa: B036 - everything must reach the parent
            os.write(w, f"EXC {type(exc).__name__}: {exc}\n".encode())
            code = 70
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        chunks.append(f.read())
    _, status = os.waitpid(pid, 0)
    return Child(status, b"".join(chunks).decode())


def errno_of(call: Callable[[], object]) -> int:
    """Run call; return 0 if it succeeded, else the errno of the OSError it raised."""
    try:
        call()
    except OSError as err:
        return err.errno or -1
    return 0


def open_socket(family: int, kind: int) -> None:
    socket.socket(family, kind).close()


# Privileged children load with CAP_SYS_ADMIN and no no_new_privs (like runc when
# process.noNewPrivileges is false); unprivileged ones run as nobody and need no_new_privs.
USERS = [pytest.param("root", marks=needs_root), "nobody"]


# --- validate(): pure logic ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in CLIENTS.glob("*-config.json")))
def test_engine_profiles_validate(name: str) -> None:
    config = json.loads((CLIENTS / name).read_text())
    profile = config.get("linux", {}).get("seccomp")
    if profile is None:
        pytest.skip(f"{name} has no seccomp profile")
    validate(profile)  # must not raise
    assert profile["syscalls"], "the engine profile has rules"


def _with_rules(*rules: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": list(rules), **top}


BAD_CONFIGS: list[tuple[Any, str]] = [
    ([], "linux.seccomp: must be an object"),
    ({}, "linux.seccomp.defaultAction: is required"),
    ({"defaultAction": 1}, "linux.seccomp.defaultAction: must be a string"),
    ({"defaultAction": "SCMP_ACT_NOPE"}, 'linux.seccomp.defaultAction: unknown action "SCMP_ACT_NOPE"'),
    (
        {"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1},
        "linux.seccomp.defaultErrnoRet: is only valid with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, "
        'not "SCMP_ACT_ALLOW"',
    ),
    (
        {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": -1},
        "linux.seccomp.defaultErrnoRet: must be an unsigned 32-bit integer",
    ),
    (
        {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 70000},
        "linux.seccomp.defaultErrnoRet: 70000 does not fit in 16 bits",
    ),
    (
        {"defaultAction": "SCMP_ACT_ALLOW", "architectures": "SCMP_ARCH_X86_64"},
        "linux.seccomp.architectures: must be an array of strings",
    ),
    (
        {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_Z80"]},
        'linux.seccomp.architectures[1]: unknown architecture "SCMP_ARCH_Z80"',
    ),
    (
        {"defaultAction": "SCMP_ACT_ALLOW", "architectures": [64]},
        "linux.seccomp.architectures[0]: must be a string",
    ),
    (
        {"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_FOO"]},
        'linux.seccomp.flags[1]: unknown flag "SECCOMP_FILTER_FLAG_FOO"',
    ),
    (
        {"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]},
        "linux.seccomp.flags[0]: SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV needs a rule with SCMP_ACT_NOTIFY",
    ),
    (
        {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"},
        "linux.seccomp.listenerPath: is set but no rule uses SCMP_ACT_NOTIFY",
    ),
    (
        _with_rules({"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}),
        "linux.seccomp.listenerPath: is required when a rule uses SCMP_ACT_NOTIFY",
    ),
    (
        {"defaultAction": "SCMP_ACT_NOTIFY", "listenerPath": "/run/agent.sock"},
        "linux.seccomp.defaultAction: SCMP_ACT_NOTIFY cannot be the default action",
    ),
    (
        _with_rules({"names": ["mkdir", "sendmsg"], "action": "SCMP_ACT_NOTIFY"}, listenerPath="/run/agent.sock"),
        'linux.seccomp.syscalls[0].names[1]: SCMP_ACT_NOTIFY cannot be used for "sendmsg": the runtime needs '
        "it to hand the listener its fd",
    ),
    (
        _with_rules({"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY", "errnoRet": 1}, listenerPath="/a"),
        'linux.seccomp.syscalls[0].errnoRet: is only valid with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not '
        '"SCMP_ACT_NOTIFY"',
    ),
    (
        {"defaultAction": "SCMP_ACT_ALLOW", "listenerMetadata": "x"},
        "linux.seccomp.listenerMetadata: must not be set without listenerPath",
    ),
    (
        {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {"names": ["mkdir"]}},
        "linux.seccomp.syscalls: must be an array of objects",
    ),
    (
        _with_rules(
            {"names": ["read"], "action": "SCMP_ACT_LOG"}, {"names": ["mkdir"], "action": "SCMP_ACT_FOO"}
        ),
        'linux.seccomp.syscalls[1].action: unknown action "SCMP_ACT_FOO"',
    ),
    (_with_rules({"action": "SCMP_ACT_ERRNO"}), "linux.seccomp.syscalls[0].names: is required"),
    (_with_rules({"names": ["mkdir"]}), "linux.seccomp.syscalls[0].action: is required"),
    (
        _with_rules({"names": "mkdir", "action": "SCMP_ACT_ERRNO"}),
        "linux.seccomp.syscalls[0].names: must be an array of strings",
    ),
    (
        _with_rules({"names": [], "action": "SCMP_ACT_ERRNO"}),
        "linux.seccomp.syscalls[0].names: must contain at least one syscall name",
    ),
    (
        _with_rules({"names": ["mkdir", ""], "action": "SCMP_ACT_ERRNO"}),
        "linux.seccomp.syscalls[0].names[1]: must be a non-empty string",
    ),
    (
        _with_rules({"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": True}),
        "linux.seccomp.syscalls[0].errnoRet: must be an unsigned 32-bit integer",
    ),
    (
        _with_rules({"names": ["mkdir"], "action": "SCMP_ACT_KILL", "errnoRet": 1}),
        "linux.seccomp.syscalls[0].errnoRet: is only valid with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, "
        'not "SCMP_ACT_KILL"',
    ),
    (
        _with_rules({"names": ["socket"], "action": "SCMP_ACT_ERRNO", "args": {"index": 0}}),
        "linux.seccomp.syscalls[0].args: must be an array of objects",
    ),
    (
        _with_rules({"names": ["socket"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 2}]}),
        "linux.seccomp.syscalls[0].args[0].op: is required",
    ),
    (
        _with_rules(
            {
                "names": ["socket"],
                "action": "SCMP_ACT_ERRNO",
                "args": [
                    {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"},
                    {"index": 1, "value": 2, "op": "SCMP_CMP_XX"},
                ],
            }
        ),
        'linux.seccomp.syscalls[0].args[1].op: unknown operator "SCMP_CMP_XX"',
    ),
    (
        _with_rules(
            {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 2, "op": 4}]}
        ),
        "linux.seccomp.syscalls[0].args[0].op: must be a string",
    ),
    (
        _with_rules(
            {
                "names": ["socket"],
                "action": "SCMP_ACT_ERRNO",
                "args": [{"index": "0", "value": 2, "op": "SCMP_CMP_EQ"}],
            }
        ),
        "linux.seccomp.syscalls[0].args[0].index: must be an unsigned integer",
    ),
    (
        _with_rules(
            {
                "names": ["socket"],
                "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 6, "value": 2, "op": "SCMP_CMP_EQ"}],
            }
        ),
        "linux.seccomp.syscalls[0].args[0].index: 6 is out of range (a syscall has 6 arguments: 0-5)",
    ),
    (
        _with_rules(
            {
                "names": ["socket"],
                "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 0, "value": 2**64, "op": "SCMP_CMP_EQ"}],
            }
        ),
        "linux.seccomp.syscalls[0].args[0].value: must be an unsigned 64-bit integer",
    ),
    (
        _with_rules(
            {
                "names": ["socket"],
                "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 0, "value": 2, "valueTwo": -3, "op": "SCMP_CMP_MASKED_EQ"}],
            }
        ),
        "linux.seccomp.syscalls[0].args[0].valueTwo: must be an unsigned 64-bit integer",
    ),
]


@pytest.mark.parametrize(("config", "message"), BAD_CONFIGS, ids=[m.split(":")[0] for _, m in BAD_CONFIGS])
def test_validate_names_the_json_path(config: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(config)
    assert str(info.value) == message


def test_validate_uses_the_given_field() -> None:
    with pytest.raises(ConfigError) as info:
        validate({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["x"]}, field="process.seccomp")
    assert info.value.field == "process.seccomp.architectures[0]"
    assert str(info.value) == 'process.seccomp.architectures[0]: unknown architecture "x"'


def test_compile_filter_validates_first() -> None:
    with pytest.raises(
        ConfigError, match=r'^linux\.seccomp\.syscalls\[0\]\.action: unknown action "SCMP_ACT_FOO"$'
    ):
        compile_filter(_with_rules({"names": ["mkdir"], "action": "SCMP_ACT_FOO"}))


def test_validate_accepts_every_spec_value() -> None:
    validate(
        {
            "defaultAction": "SCMP_ACT_TRACE",
            "defaultErrnoRet": 5,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64", "SCMP_ARCH_RISCV64", "SCMP_ARCH_SHEB"],
            "flags": [
                "SECCOMP_FILTER_FLAG_TSYNC",
                "SECCOMP_FILTER_FLAG_LOG",
                "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
            ],
            "listenerPath": "/run/agent.sock",
            "listenerMetadata": "for the agent",
            "syscalls": [
                {"names": ["a"], "action": action}
                for action in (
                    "SCMP_ACT_KILL",
                    "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD",
                    "SCMP_ACT_TRAP",
                    "SCMP_ACT_ERRNO",
                    "SCMP_ACT_TRACE",
                    "SCMP_ACT_ALLOW",
                    "SCMP_ACT_LOG",
                    "SCMP_ACT_NOTIFY",
                )
            ]
            + [
                {
                    "names": ["b"],
                    "action": "SCMP_ACT_ERRNO",
                    "args": [{"index": 5, "value": 2**64 - 1, "op": op}],
                }
                for op in (
                    "SCMP_CMP_NE",
                    "SCMP_CMP_LT",
                    "SCMP_CMP_LE",
                    "SCMP_CMP_EQ",
                    "SCMP_CMP_GE",
                    "SCMP_CMP_GT",
                    "SCMP_CMP_MASKED_EQ",
                )
            ],
        }
    )


def _python(code: str) -> str:
    """Run code in a fresh venv interpreter (so sys.modules starts empty); return its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_validate_does_not_load_libseccomp() -> None:
    out = _python(
        "import json, sys\n"
        "from pyouki import seccomp\n"
        f"seccomp.validate(json.load(open({str(PODMAN_CONFIG)!r}))['linux']['seccomp'])\n"
        "print(sorted(m for m in ('pyseccomp', 'ctypes', 'typing', 'subprocess') if m in sys.modules))\n"
    )
    assert out == "[]"


def test_compile_filter_does_not_search_for_libraries() -> None:
    # pyseccomp would run `ldconfig -p` through ctypes.util.find_library: it must not, and the
    # stand-in used during its import must not stay behind.
    out = _python(
        "import json, sys\n"
        "from pyouki import seccomp\n"
        f"f = seccomp.compile_filter(json.load(open({str(PODMAN_CONFIG)!r}))['linux']['seccomp'])\n"
        "print('subprocess' in sys.modules, 'ctypes.util' in sys.modules, f.rules > 300)\n"
        "import ctypes, ctypes.util\n"
        "print(ctypes.util.find_library('c') is not None, ctypes.util.__file__.endswith('util.py'))\n"
    )
    assert out.splitlines() == ["False False True", "True True"]


def test_unknown_syscalls_are_skipped() -> None:
    f = compile_filter(_with_rules({"names": ["mkdir", "no_such_syscall_xyz"], "action": "SCMP_ACT_ERRNO"}))
    assert f.skipped == ["no_such_syscall_xyz"]
    assert f.rules == 1


def test_rules_equal_to_the_default_action_are_skipped() -> None:
    config = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 38,
        "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},  # same as default: skipped
            {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO"},  # EPERM: differs, kept
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
        ],
    }
    assert compile_filter(config).rules == 3


def test_same_index_conditions_become_separate_rules() -> None:
    args = [{"index": 0, "value": v, "op": "SCMP_CMP_EQ"} for v in (1, 2, 10)]
    f = compile_filter(_with_rules({"names": ["socket"], "action": "SCMP_ACT_ERRNO", "args": args}))
    assert f.rules == 3
    distinct = [{"index": i, "value": 1, "op": "SCMP_CMP_EQ"} for i in (0, 1, 2)]
    f = compile_filter(_with_rules({"names": ["socket"], "action": "SCMP_ACT_ERRNO", "args": distinct}))
    assert f.rules == 1


def test_unsupported_architecture_names_the_field() -> None:
    # A spec architecture that libseccomp 2.5 does not know yet (added in 2.6).
    try:
        compile_filter(
            {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86", "SCMP_ARCH_SHEB"]}
        )
    except ConfigError as err:
        message = 'architecture "SCMP_ARCH_SHEB" not supported by libseccomp'
        assert str(err) == f"linux.seccomp.architectures[1]: {message}"
    else:
        pytest.skip("this libseccomp supports SCMP_ARCH_SHEB")


# --- real filters, loaded into forked children ---------------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A scratch directory nobody can write to (pytest's own tmp_path is private to root)."""
    with tempfile.TemporaryDirectory(prefix="pyouki-seccomp-") as name:
        os.chmod(name, 0o777)
        yield Path(name)


@pytest.mark.parametrize("user", USERS)
def test_errno_action_with_errno_ret(user: str, shared_dir: Path) -> None:
    tmp_path = shared_dir
    config = _with_rules({"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38})

    def body(report: Callable[[str], None]) -> None:
        f = compile_filter(config)
        os.mkdir(tmp_path / "before")
        f.load()
        report(str(errno_of(lambda: os.mkdir(tmp_path / "after"))))
        report(str(errno_of(lambda: os.rmdir(tmp_path / "before"))))

    child = run_child(body, user=user)
    assert child.exit_code == 0, child.output
    assert child.output.split() == [str(errno.ENOSYS), "0"]
    assert not (tmp_path / "after").exists()


@pytest.mark.parametrize("user", USERS)
def test_errno_action_defaults_to_eperm(user: str) -> None:
    f = compile_filter(_with_rules({"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}))

    def body(report: Callable[[str], None]) -> None:
        f.load()
        report(str(errno_of(lambda: os.mkdir("/nonexistent-dir/x"))))

    child = run_child(body, user=user)
    assert child.output.split() == [str(errno.EPERM)]


@pytest.mark.parametrize("user", USERS)
def test_default_action_with_default_errno_ret(user: str) -> None:
    # Everything is ENOSYS except what the process needs to report and exit.
    config = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 38,
        "syscalls": [{"names": ["write", "exit", "exit_group", "getpid"], "action": "SCMP_ACT_ALLOW"}],
    }
    f = compile_filter(config)

    def body(report: Callable[[str], None]) -> None:
        f.load()
        os.getpid()
        report(str(errno_of(lambda: os.stat("/"))))

    child = run_child(body, user=user)
    assert child.exit_code == 0, child.output
    assert child.output.split() == [str(errno.ENOSYS)]


@pytest.mark.parametrize("user", USERS)
def test_argument_condition_only_blocks_matching_calls(user: str) -> None:
    config = _with_rules(
        {
            "names": ["socket"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": errno.EACCES,
            "args": [{"index": 0, "value": socket.AF_INET, "op": "SCMP_CMP_EQ"}],
        }
    )
    f = compile_filter(config)

    def body(report: Callable[[str], None]) -> None:
        f.load()
        report(str(errno_of(lambda: open_socket(socket.AF_INET, socket.SOCK_STREAM))))
        report(str(errno_of(lambda: open_socket(socket.AF_UNIX, socket.SOCK_STREAM))))
        report(str(errno_of(lambda: open_socket(socket.AF_NETLINK, socket.SOCK_RAW))))

    child = run_child(body, user=user)
    assert child.output.split() == [str(errno.EACCES), "0", "0"]


@pytest.mark.parametrize("user", USERS)
def test_conditions_on_distinct_arguments_are_anded(user: str) -> None:
    # socket(AF_UNIX, SOCK_DGRAM | flags): arg1 carries SOCK_CLOEXEC, so compare under the type mask.
    config = _with_rules(
        {
            "names": ["socket"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": errno.EACCES,
            "args": [
                {"index": 0, "value": socket.AF_UNIX, "op": "SCMP_CMP_EQ"},
                {"index": 1, "value": 0xF, "valueTwo": socket.SOCK_DGRAM, "op": "SCMP_CMP_MASKED_EQ"},
            ],
        }
    )
    f = compile_filter(config)

    def body(report: Callable[[str], None]) -> None:
        f.load()
        report(str(errno_of(lambda: open_socket(socket.AF_UNIX, socket.SOCK_DGRAM))))
        report(str(errno_of(lambda: open_socket(socket.AF_UNIX, socket.SOCK_STREAM))))
        report(str(errno_of(lambda: open_socket(socket.AF_INET, socket.SOCK_DGRAM))))

    child = run_child(body, user=user)
    assert child.output.split() == [str(errno.EACCES), "0", "0"]


@pytest.mark.parametrize("user", USERS)
def test_conditions_on_one_argument_are_ored(user: str) -> None:
    # runc semantics: libseccomp cannot AND two conditions on one argument, so each becomes a rule.
    config = _with_rules(
        {
            "names": ["socket"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": errno.EACCES,
            "args": [
                {"index": 0, "value": socket.AF_INET, "op": "SCMP_CMP_EQ"},
                {"index": 0, "value": socket.AF_UNIX, "op": "SCMP_CMP_EQ"},
            ],
        }
    )
    f = compile_filter(config)

    def body(report: Callable[[str], None]) -> None:
        f.load()
        report(str(errno_of(lambda: open_socket(socket.AF_INET, socket.SOCK_STREAM))))
        report(str(errno_of(lambda: open_socket(socket.AF_UNIX, socket.SOCK_STREAM))))
        report(str(errno_of(lambda: open_socket(socket.AF_NETLINK, socket.SOCK_RAW))))

    child = run_child(body, user=user)
    assert child.output.split() == [str(errno.EACCES), str(errno.EACCES), "0"]


@pytest.mark.parametrize(
    "action", ["SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP"]
)
@pytest.mark.parametrize("user", USERS)
def test_kill_actions_end_the_process_with_sigsys(user: str, action: str) -> None:
    f = compile_filter(_with_rules({"names": ["getppid"], "action": action}))

    def body(report: Callable[[str], None]) -> None:
        f.load()
        report("loaded")
        os.getppid()
        report("survived")

    child = run_child(body, user=user)
    assert child.output.split() == ["loaded"]
    assert child.signal == signal.SIGSYS


@pytest.mark.parametrize("user", USERS)
def test_log_and_flags_load(user: str) -> None:
    config = _with_rules(
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EROFS},
        {"names": ["getppid"], "action": "SCMP_ACT_LOG"},
        flags=["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
        architectures=["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    )
    f = compile_filter(config)

    def body(report: Callable[[str], None]) -> None:
        f.load()
        os.getppid()  # logged, allowed
        report(str(errno_of(lambda: os.mkdir("/nonexistent-dir/x"))))

    child = run_child(body, user=user)
    assert child.exit_code == 0, child.output
    assert child.output.split() == [str(errno.EROFS)]


@pytest.mark.parametrize("user", USERS)
def test_podman_profile_runs_a_program(user: str) -> None:
    f = compile_filter(podman_seccomp())
    assert isinstance(f, SeccompFilter)

    def body(report: Callable[[str], None]) -> None:
        f.load()
        # personality is allowed only for a few exact values; anything else gets defaultErrnoRet.
        _libc.personality.restype = ctypes.c_int
        query = _libc.personality(ctypes.c_ulong(0xFFFFFFFF))
        refused = _libc.personality(ctypes.c_ulong(ADDR_NO_RANDOMIZE))
        report(f"{int(query >= 0)} {refused} {ctypes.get_errno()}")
        os.execv("/bin/true", ["true"])

    child = run_child(body, user=user)
    assert child.output.split() == ["1", "-1", str(errno.ENOSYS)]
    assert child.exit_code == 0


@needs_root
def test_load_does_not_set_no_new_privs() -> None:
    f = compile_filter(_with_rules({"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}))

    def body(report: Callable[[str], None]) -> None:
        f.load()
        report(str(_prctl(PR_GET_NO_NEW_PRIVS)))

    child = run_child(body, user="root", nnp=False)
    assert child.output.split() == ["0"]


@pytest.mark.skipif(not is_root, reason="needs root to drop to nobody")
def test_unprivileged_load_without_no_new_privs_fails() -> None:
    f = compile_filter(_with_rules({"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}))

    def body(report: Callable[[str], None]) -> None:
        try:
            f.load()
        except PyoukiError as err:
            report(str(err))

    child = run_child(body, user="nobody", nnp=False)
    assert child.exit_code == 0
    assert child.output.strip() == (
        "failed to load seccomp filter: permission denied (needs no_new_privs or CAP_SYS_ADMIN)"
    )


def test_compile_does_not_change_the_config() -> None:
    profile = podman_seccomp()
    before = copy.deepcopy(profile)
    compile_filter(profile)
    assert profile == before


@pytest.mark.skipif(not is_root, reason="needs root to drop to nobody")
def test_rootless_init_loads_without_no_new_privs_in_a_user_namespace() -> None:
    # A rootless container's init holds CAP_SYS_ADMIN in its own user namespace, which is enough.
    f = compile_filter(_with_rules({"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}))

    def body(report: Callable[[str], None]) -> None:
        if _libc.unshare(CLONE_NEWUSER) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER) failed")
        f.load()
        report(str(_prctl(PR_GET_NO_NEW_PRIVS)))
        report(str(errno_of(lambda: os.mkdir("/nonexistent-dir/x"))))

    child = run_child(body, user="nobody", nnp=False)
    assert child.exit_code == 0, child.output
    assert child.output.split() == ["0", str(errno.EPERM)]


@pytest.mark.parametrize("tsync", [True, False])
def test_tsync_flag_reaches_other_threads(tsync: bool) -> None:
    flags = ["SECCOMP_FILTER_FLAG_TSYNC"] if tsync else []
    f = compile_filter(
        _with_rules({"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 77}, flags=flags)
    )

    def body(report: Callable[[str], None]) -> None:
        import threading

        loaded = threading.Event()
        seen: list[int] = []

        def other_thread() -> None:
            loaded.wait()
            seen.append(errno_of(lambda: os.mkdir("/nonexistent-dir/x")))

        thread = threading.Thread(target=other_thread)
        thread.start()
        f.load()
        loaded.set()
        thread.join()
        report(str(seen[0]))

    child = run_child(body, user="nobody")
    # Without TSYNC the filter only binds the calling thread; the kernel then says ENOENT.
    assert child.output.split() == [str(77 if tsync else errno.ENOENT)]


# --- the BPF cache -------------------------------------------------------------------------------


def _compile_in_fresh_process(cache_dir: Path) -> tuple[bool, str]:
    """Compile the podman profile with cache_dir in a new interpreter.

    Returns whether pyseccomp had to be imported (a cache miss) and the program's hex digest.
    """
    out = _python(
        "import hashlib, json, sys\n"
        "from pyouki import seccomp\n"
        f"c = json.load(open({str(PODMAN_CONFIG)!r}))['linux']['seccomp']\n"
        f"f = seccomp.compile_filter(c, cache_dir={str(cache_dir)!r})\n"
        "print('pyseccomp' in sys.modules, hashlib.sha256(f.bpf).hexdigest())\n"
    )
    imported, digest = out.split()
    return imported == "True", digest


def test_cache_hit_skips_libseccomp(tmp_path: Path) -> None:
    import hashlib

    expected = hashlib.sha256(compile_filter(podman_seccomp()).bpf).hexdigest()
    cache = tmp_path / "cache"
    assert _compile_in_fresh_process(cache) == (True, expected)
    entries = list(cache.iterdir())
    assert len(entries) == 1 and entries[0].stat().st_mode & 0o777 == 0o600
    assert _compile_in_fresh_process(cache) == (False, expected)


def test_cache_ignores_untrusted_or_corrupt_entries(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert _compile_in_fresh_process(cache)[0] is True
    (entry,) = cache.iterdir()
    entry.chmod(0o666)  # writable by others: not trusted, regenerated
    assert _compile_in_fresh_process(cache)[0] is True
    assert entry.stat().st_mode & 0o777 == 0o600
    entry.write_bytes(b'{"key": "garbage"}\n\x00\x01')
    assert _compile_in_fresh_process(cache)[0] is True
    assert _compile_in_fresh_process(cache)[0] is False


def test_cache_distinguishes_profiles(tmp_path: Path) -> None:
    first = _with_rules({"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"})
    second = _with_rules({"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5})
    a = compile_filter(first, cache_dir=str(tmp_path))
    b = compile_filter(second, cache_dir=str(tmp_path))
    assert a.bpf != b.bpf
    assert compile_filter(first, cache_dir=str(tmp_path)).bpf == a.bpf
    assert compile_filter(second, cache_dir=str(tmp_path)).bpf == b.bpf
    assert len(list(tmp_path.iterdir())) == 2


@pytest.mark.parametrize("user", USERS)
def test_cached_filter_loads(user: str, tmp_path: Path) -> None:
    config = _with_rules(
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
        flags=["SECCOMP_FILTER_FLAG_TSYNC"],
    )
    compile_filter(config, cache_dir=str(tmp_path))
    f = compile_filter(config, cache_dir=str(tmp_path))  # from the cache

    def body(report: Callable[[str], None]) -> None:
        f.load()
        report(str(errno_of(lambda: os.mkdir("/nonexistent-dir/x"))))

    child = run_child(body, user=user)
    assert f.flags == 1
    assert child.output.split() == [str(errno.ENOSYS)]


def test_too_long_filter_is_a_config_error() -> None:
    # One rule per value on one argument: about one instruction each, over the kernel's 4096.
    args = [{"index": 0, "value": v, "op": "SCMP_CMP_EQ"} for v in range(5000)]
    with pytest.raises(ConfigError, match=r"^linux\.seccomp: the filter has \d+ instructions, more than"):
        compile_filter(_with_rules({"names": ["personality"], "action": "SCMP_ACT_ERRNO", "args": args}))
