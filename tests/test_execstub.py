"""The exec stub itself: its bytes are its source, its memfd is sealed, and it runs what pyouki
hands it (and nothing when run any other way)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyouki import execstub
from pyouki.execstub import ExecStub, script_interpreter

needs_stub = pytest.mark.skipif(os.uname().machine not in execstub.STUBS, reason="no stub for this machine")


def _source(machine: str) -> str:
    text = Path(execstub.__file__).read_text()
    begin, end = f"# --- {machine} source (begin) ---\n", f"# --- {machine} source (end) ---"
    body = text[text.index(begin) + len(begin):text.index(end)]
    return "".join(line[2:] + "\n" for line in body.splitlines())


TOOLS = {"x86_64": ("as", "objcopy", ["--64"]),
         "aarch64": ("aarch64-linux-gnu-as", "aarch64-linux-gnu-objcopy", [])}


@pytest.mark.parametrize("machine", sorted(execstub.STUBS))
def test_the_bytes_are_the_commented_source(tmp_path: Path, machine: str) -> None:
    assembler, objcopy, flags = TOOLS[machine]
    if not (shutil.which(assembler) and shutil.which(objcopy)):
        pytest.skip(f"needs {assembler} (binutils)")
    (tmp_path / "stub.s").write_text(_source(machine))
    subprocess.run([assembler, *flags, "-o", "stub.o", "stub.s"], cwd=tmp_path, check=True)
    subprocess.run([objcopy, "-O", "binary", "stub.o", "stub.bin"], cwd=tmp_path, check=True)
    assert (tmp_path / "stub.bin").read_bytes() == execstub.STUBS[machine]


@pytest.mark.skipif(not shutil.which("qemu-aarch64"), reason="needs qemu-user")
def test_the_aarch64_stub_under_qemu(tmp_path: Path) -> None:
    """The aarch64 stub does what the x86_64 one does (its execve runs host programs natively)."""
    code = tmp_path / "stub"
    code.write_bytes(execstub.STUBS["aarch64"])
    code.chmod(0o755)
    unknown = tmp_path / "stub-short-table"  # errno 2 left out of the table: "errno 2"
    unknown.write_bytes(execstub.STUBS["aarch64"].replace(b"\x02no such file", b"\xfeno such file"))
    unknown.chmod(0o755)

    def run(stub: Path, argv0: str, *args: str, as_pyouki: bool = True) -> tuple[int, bytes, bytes]:
        fd = os.open(stub, os.O_RDONLY)
        try:
            name = f"/proc/self/fd/{fd}" if as_pyouki else str(stub)
            r = subprocess.run(["qemu-aarch64", "-0", argv0, name, *args], capture_output=True, pass_fds=(fd,),
                               env={"X": "y"}, check=False)
        finally:
            os.close(fd)
        return r.returncode, r.stdout, r.stderr

    assert run(code, "/bin/sh", "my-name", "-c", 'echo "$0 $X"') == (0, b"my-name y\n", b"")
    assert run(code, "/no/such") == (1, b"", b"exec /no/such: no such file or directory\n")
    assert run(code, "/etc/passwd", "x") == (1, b"", b"exec /etc/passwd: permission denied\n")
    assert run(unknown, "/no/such") == (1, b"", b"exec /no/such: errno 2\n")
    refused = f"exec {code}: permission denied (pyouki's exec stub)\n".encode()
    assert run(code, "/bin/sh", "-c", "echo ran", as_pyouki=False) == (126, b"", refused)


@needs_stub
def test_the_memfd_is_sealed_close_on_exec_and_above_the_preserved_fds() -> None:
    stub = ExecStub.prepare(40)
    try:
        assert stub.fd >= 40
        assert fcntl.fcntl(stub.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert fcntl.fcntl(stub.fd, fcntl.F_GET_SEALS) & execstub.SEALS == execstub.SEALS
        with pytest.raises(PermissionError):
            os.pwrite(stub.fd, b"x", 0)
        with pytest.raises(PermissionError):
            os.ftruncate(stub.fd, 0)
        with pytest.raises(PermissionError):  # through /proc too, as a container would try
            with open(f"/proc/self/fd/{stub.fd}", "r+b") as f:
                f.write(b"x")
    finally:
        os.close(stub.fd)


def _run_through_stub(exe: str, args: list[str], short_table: bool = False) -> subprocess.CompletedProcess[bytes]:
    """A child that execs exe through a fresh stub, as init does (short_table: without ENOENT's text)."""
    code = (
        "import os, sys; from pyouki import execstub\n"
        f"if {short_table}:\n"
        "    m = os.uname().machine\n"
        "    execstub.STUBS[m] = execstub.STUBS[m].replace(b'\\x02no such file', b'\\xfeno such file')\n"
        "execstub.ExecStub.prepare(3).execute(sys.argv[1], sys.argv[2:], {'PATH': '/bin', 'X': 'y'})\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    return subprocess.run([sys.executable, "-c", code, exe, *args], capture_output=True, cwd=root, check=False)


@needs_stub
def test_the_program_gets_its_argv_and_env() -> None:
    r = _run_through_stub("/bin/sh", ["my-name", "-c", 'cat /proc/$$/cmdline; echo "$0 $X"', "zero"])
    assert r.returncode == 0 and r.stderr == b""
    assert r.stdout == b'my-name\0-c\0cat /proc/$$/cmdline; echo "$0 $X"\0zero\0zero y\n'



@needs_stub
@pytest.mark.parametrize(("target", "reason"), [
    ("/no/such/program", "no such file or directory"),
    ("/etc/passwd", "permission denied"),
    ("/", "permission denied"),
])
def test_a_failed_exec_says_what_runc_says(target: str, reason: str) -> None:
    r = _run_through_stub(target, ["x"])
    assert r.returncode == 1
    assert r.stderr == f"exec {target}: {reason}\n".encode()


@needs_stub
def test_an_errno_without_text_is_a_number() -> None:
    r = _run_through_stub("/no/such/program", ["x"], short_table=True)
    assert (r.returncode, r.stderr) == (1, b"exec /no/such/program: errno 2\n")


@needs_stub
def test_not_a_format_the_kernel_knows(tmp_path: Path) -> None:
    prog = tmp_path / "prog"
    prog.write_text("text\n")
    prog.chmod(0o755)
    r = _run_through_stub(str(prog), ["prog"])
    assert (r.returncode, r.stderr) == (1, f"exec {prog}: exec format error\n".encode())


@needs_stub
@pytest.mark.parametrize("how", ["direct", "script"])
def test_run_any_other_way_it_refuses(tmp_path: Path, how: str) -> None:
    """/proc/self/exe of the program (or a #! pointing there) is only the stub, which stops."""
    if how == "direct":
        r = _run_through_stub("/proc/self/exe", ["/proc/self/exe", "-c", "print('python')"])
        name = "/proc/self/exe"
    else:
        script = tmp_path / "s"
        script.write_text("#!/proc/self/exe\nprint('python')\n")
        script.chmod(0o755)
        r = _run_through_stub(str(script), [str(script)])
        name = str(script)
    assert r.returncode == 126
    assert r.stdout == b""
    assert r.stderr == f"exec {name}: permission denied (pyouki's exec stub)\n".encode()


@pytest.mark.parametrize(("head", "interpreter"), [
    (b"#!/bin/sh\necho", "/bin/sh"),
    (b"#! /usr/bin/env  python3 -u\n", "/usr/bin/env"),
    (b"#!\t/bin/bash\t-e\n", "/bin/bash"),
    (b"#!\n", None),
    (b"\x7fELF", None),
    (b"echo hi", None),
])
def test_script_interpreter(head: bytes, interpreter: str | None) -> None:
    assert script_interpreter(head) == interpreter


def test_without_a_stub_the_runtime_interpreter_is_refused(tmp_path: Path) -> None:
    """The fallback where no stub can be made: our own inode, directly or as a #! interpreter."""
    from pyouki.errors import PyoukiError

    st = os.stat("/proc/self/exe")
    stub = ExecStub(-1, (st.st_dev, st.st_ino))
    link = tmp_path / "py"
    link.symlink_to("/proc/self/exe")
    script = tmp_path / "s"
    script.write_text(f"#!{link}\n")
    for path in ("/proc/self/exe", str(link), str(script), f"/proc/{os.getpid()}/exe"):
        with pytest.raises(PyoukiError, match="process.args\\[0\\]: .* is the runtime's own interpreter"):
            stub.refuse_runtime_exe(path)
    stub.refuse_runtime_exe("/bin/sh")  # anything else is left to execve
