"""Pure logic of pyouki.config: the fast JSON reader and field checks (no containers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyouki.config import check_sysctl, parse_json, sysctl_namespace
from pyouki.errors import ConfigError, PyoukiError

FIXTURES = Path(__file__).parent / "fixtures" / "clients"


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_parse_json_matches_the_json_module_on_real_configs(name: str) -> None:
    text = (FIXTURES / name).read_text()
    assert parse_json(text, name) == json.loads(text)


@pytest.mark.parametrize("text", ['{"a": [1, -2.5e3, true, false, null, "\\u00e9\\n"]}', "  {}\n", "[]", '"s"'])
def test_parse_json_values(text: str) -> None:
    assert parse_json(text, "x.json") == json.loads(text)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"a": 1,}', "property name"),
        ('{"a" 1}', "delimiter"),
        ("[1] x", "extra data"),
        ('{"a": "\\q"}', "escape"),
        ("", "expecting value"),
    ],
)
def test_parse_json_errors_name_the_file_and_place(text: str, fragment: str) -> None:
    with pytest.raises(PyoukiError) as info:
        parse_json(text, "/b/config.json")
    message = str(info.value)
    assert message.startswith("failed to parse /b/config.json: ")
    assert fragment in message.lower()
    assert "\n" not in message


@pytest.mark.parametrize(("key", "kind"), [
    ("net.ipv4.ip_forward", "network"), ("net/ipv4/ip_forward", "network"),
    ("net/ipv4/conf/eth0.100/rp_filter", "network"),  # slash form: the "." belongs to the interface
    ("kernel.shmmax", "ipc"), ("kernel.msg_next_id", "ipc"), ("fs.mqueue.msg_max", "ipc"),
    ("kernel.domainname", "uts"), ("kernel/hostname", "uts"),
    ("kernel.core_pattern", None), ("kernel.shmmaxx", None), ("vm.swappiness", None), ("fs.file-max", None),
])
def test_sysctl_namespace(key: str, kind: str | None) -> None:
    assert sysctl_namespace(key) == kind


@pytest.mark.parametrize("key", ["net..ipv4", "net.", ".net.x", "net/../kernel/core_pattern", "net", "net.a\0b"])
def test_malformed_sysctl_names_refused(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_sysctl(key, {"network": None})
    assert str(info.value) == f"linux.sysctl.{key}: not a valid sysctl name"


@pytest.mark.parametrize(("annotations", "field"), [(-0.5, "annotations"), (["a"], "annotations"),
                                                     ({"a": 1}, "annotations.a"), ({"a": None}, "annotations.a")])
def test_annotations_must_be_an_object_of_strings(tmp_path: Path, annotations: object, field: str) -> None:
    # the config fuzzer found `"annotations": -0.5` reaching the state file's writer (internal error)
    from pyouki.config import validate

    (tmp_path / "rootfs").mkdir()
    config = {"ociVersion": "1.3.0", "root": {"path": "rootfs"}, "process": {"args": ["true"], "cwd": "/"},
              "annotations": annotations}
    with pytest.raises(ConfigError) as err:
        validate(config, str(tmp_path), rootless=False)
    assert str(err.value).startswith(f"{field}: ")
