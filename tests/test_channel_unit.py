"""Pure logic of the sync channel, the fork guard and the error helpers (real pipes and forks, no containers)."""

from __future__ import annotations

import os

import pytest

from pyouki.channel import PIPE_BUF, Channel, fork_child
from pyouki.errors import ConfigError, PyoukiError, describe


def _pipe() -> tuple[Channel, Channel]:
    r, w = os.pipe()
    return Channel(read_fd=r), Channel(write_fd=w)


def test_long_messages_keep_every_byte_and_newline() -> None:
    reader, writer = _pipe()
    text = "first line\n" + "é" * 5000 + "\nlast line\n"
    pid = fork_child(lambda: (writer.send("error", text), writer.send("ready"), os._exit(0)))
    writer.close()
    assert reader.receive() == ("error", text)
    assert reader.receive() == ("ready", "")
    assert reader.receive() == ("eof", "")
    assert os.waitpid(pid, 0)[1] == 0


def test_two_writers_on_one_pipe_do_not_mix() -> None:
    """The intermediate and init share the writing end: frames of at most PIPE_BUF stay whole
    and a long message is put back together even with the other writer's frames in between."""
    reader, writer = _pipe()
    long = "x" * (PIPE_BUF * 8) + "\n" + "y" * 1000

    def errors() -> None:
        for _ in range(20):
            writer.send("error", long)
        os._exit(0)

    def pids() -> None:
        for i in range(500):
            writer.send("pid", str(i))
        os._exit(0)

    children = [fork_child(errors), fork_child(pids)]
    writer.close()
    got: dict[str, list[str]] = {"error": [], "pid": []}
    while True:
        verb, arg = reader.receive()
        if verb == "eof":
            break
        got[verb].append(arg)
    assert got["error"] == [long] * 20
    assert got["pid"] == [str(i) for i in range(500)]
    for pid in children:
        assert os.waitpid(pid, 0)[1] == 0


def test_a_frame_cut_short_reads_as_end_of_file() -> None:
    r, w = os.pipe()
    os.write(w, bytes((8, 0)) + (100).to_bytes(2, "big") + b"only part")
    os.close(w)
    assert Channel(read_fd=r).receive() == ("eof", "")


def test_unknown_type_is_an_error_message() -> None:
    r, w = os.pipe()
    os.write(w, bytes((200, 0, 0, 0)))
    os.close(w)
    verb, arg = Channel(read_fd=r).receive()
    assert verb == "error" and "malformed" in arg


def test_sending_to_a_closed_reader_raises() -> None:
    reader, writer = _pipe()
    reader.close()
    with pytest.raises(BrokenPipeError):
        writer.send("ready")


def test_the_seccomp_handover_signals_with_a_framed_message() -> None:
    """The listener fd's signal shares the sync pipe with framed messages: a raw line there would
    read as a frame header (and the reader wait for bytes that never come)."""
    from pyouki.seccomp_notify import Handover

    reader, writer = _pipe()
    handover = Handover(writer.write_fd)
    r, w = os.pipe()
    try:
        handover.send(r)  # closes r and the child's end, as in the container's process
        writer.close()
        assert reader.receive() == ("seccomp", "")
        assert reader.receive() == ("eof", "")
    finally:
        handover.close()
        reader.close()
        os.close(w)


def test_a_child_that_raises_never_returns_into_the_callers_frames(capfd: pytest.CaptureFixture[str]) -> None:
    def body() -> None:
        raise ValueError("boom")

    pid = fork_child(body)
    # were the exception to unwind, the child would run this test's code from here on
    assert pid > 0
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 1
    assert capfd.readouterr().err == ""  # no traceback either


def test_error_keeps_errno_and_cause() -> None:
    try:
        try:
            os.open("/nonexistent/pyouki-test", os.O_RDONLY)
        except OSError:
            raise PyoukiError("failed to open it: no such file or directory") from None
    except PyoukiError as e:
        assert e.errno == 2
        assert isinstance(e.cause, FileNotFoundError)
    assert PyoukiError("x", errno=13).errno == 13
    assert ConfigError("a.b", "bad").errno is None


@pytest.mark.parametrize(("error", "line"), [
    (PyoukiError("as it is"), "as it is"),
    (PermissionError(13, "Permission denied", "/x"), "permission denied: /x"),
    (RecursionError("maximum recursion depth exceeded"), "internal error: nested too deeply (recursion limit)"),
    (KeyError("k"), "internal error: KeyError: 'k'"),
    (ValueError("two\nlines."), "internal error: ValueError: two lines"),
])
def test_describe_gives_one_lowercase_line(error: BaseException, line: str) -> None:
    assert describe(error) == line
