"""Pure logic of pyouki.procattrs: node lists, and which process attributes an exec gets."""

from __future__ import annotations

import os

import pytest

from pyouki import procattrs
from pyouki.errors import ConfigError


@pytest.mark.parametrize("text, nodes", [("", []), ("0", [0]), ("0-3,7", [0, 1, 2, 3, 7]), (" 2, 0-1 ", [0, 1, 2]),
                                         ("3,3", [3])])
def test_parse_nodes(text: str, nodes: list[int]) -> None:
    assert procattrs.parse_nodes(text, "f") == nodes


@pytest.mark.parametrize("text", ["a", "1-", "-1", "3-1", "0,,1", "1024", "0-99999999999"])
def test_parse_nodes_refuses(text: str) -> None:
    with pytest.raises(ConfigError) as e:
        procattrs.parse_nodes(text, "linux.memoryPolicy.nodes")
    assert str(e.value).startswith("linux.memoryPolicy.nodes: ")


def test_ranges() -> None:
    assert procattrs._ranges([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8"
    assert procattrs._ranges([]) == ""


def test_exec_gets_its_own_or_the_containers() -> None:
    config = {"process": {"args": ["sh"], "scheduler": {"policy": "SCHED_BATCH", "nice": 2},
                          "ioPriority": {"class": "IOPRIO_CLASS_IDLE", "priority": 0}},
              "linux": {"personality": {"domain": "LINUX32"}}}
    inherited = procattrs.check(config, {"args": ["ls"]})
    assert inherited.scheduler is not None and (inherited.scheduler.policy, inherited.scheduler.nice) == \
        ("SCHED_BATCH", 2)
    assert inherited.io_priority == ("IOPRIO_CLASS_IDLE", 0) and inherited.personality == ("LINUX32", 8)
    own = procattrs.check(config, {"args": ["ls"], "scheduler": {"policy": "SCHED_IDLE"}, "ioPriority": None})
    assert own.scheduler is not None and own.scheduler.policy == "SCHED_IDLE" and own.io_priority is None


def test_unknown_names_are_listed() -> None:
    with pytest.raises(ConfigError) as e:
        procattrs.check({"process": {"ioPriority": {"class": "RT"}}})
    assert str(e.value) == ("process.ioPriority.class: unknown value 'RT' (known: IOPRIO_CLASS_RT, IOPRIO_CLASS_BE, "
                            "IOPRIO_CLASS_IDLE)")


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the LINUX32 domain of x86_64")
def test_syscall_numbers_survive_a_32_bit_personality() -> None:
    """uname says i686 under LINUX32, but the interpreter (and its syscall numbers) stay x86_64's."""
    from pyouki import syscalls as sc

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            sc.personality(0x0008)
            os.write(w, f"{os.uname().machine} {sc._nr('close_range')}".encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r) as f:
        assert f.read() == "i686 436"
