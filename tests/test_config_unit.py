"""Pure logic of pyouki.config: the fast JSON reader and field checks (no containers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyouki.config import parse_json
from pyouki.errors import PyoukiError

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
