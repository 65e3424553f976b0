"""JSON output for state and list without importing `json` (5 ms on every `state`)."""

from pyouki.log import json_string


def dumps(value: object, indent: bool = False, _level: int = 0) -> str:
    """Serialize dicts, lists, str, int, bool and None as JSON (optionally indented by tabs)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json_string(value)
    if isinstance(value, dict):
        sep = ": " if indent else ":"
        items = [f"{json_string(str(k))}{sep}{dumps(v, indent, _level + 1)}" for k, v in value.items()]
        return _wrap("{", "}", items, indent, _level)
    if isinstance(value, (list, tuple)):
        return _wrap("[", "]", [dumps(v, indent, _level + 1) for v in value], indent, _level)
    raise TypeError(f"cannot serialize {type(value).__name__}")


def _wrap(open_: str, close: str, items: list[str], indent: bool, level: int) -> str:
    if not items:
        return open_ + close
    if not indent:
        return open_ + ",".join(items) + close
    pad = "  " * (level + 1)
    return open_ + "\n" + ",\n".join(pad + i for i in items) + "\n" + "  " * level + close
