"""Pure logic of the wasm handler: which annotations ask for it, and wasmtime's errors as one line."""

from __future__ import annotations

import pytest

from pyouki import wasm
from pyouki.errors import PyoukiError


@pytest.mark.parametrize("annotations, want", [
    (None, None),
    ({}, None),
    ({"other": "x"}, None),
    ({"run.oci.handler": "wasm"}, ("run.oci.handler", "wasm")),
    ({"module.wasm.image/variant": "compat"}, ("module.wasm.image/variant", "compat")),
    ({"module.wasm.image/variant": "compat-smart"}, ("module.wasm.image/variant", "compat-smart")),
    ({"run.oci.handler": "wasm", "module.wasm.image/variant": "compat-smart"}, ("run.oci.handler", "wasm")),
])
def test_requested(annotations: dict | None, want: tuple[str, str] | None) -> None:
    config = {} if annotations is None else {"annotations": annotations}
    assert wasm.requested(config) == want


@pytest.mark.parametrize("annotations, field", [
    ({"run.oci.handler": "krun"}, "annotations.run.oci.handler: unknown handler 'krun'"),
    ({"module.wasm.image/variant": "oci"}, "annotations.module.wasm.image/variant: unknown variant 'oci'"),
])
def test_unknown_values_are_refused(annotations: dict, field: str) -> None:
    with pytest.raises(PyoukiError, match=field.replace(".", r"\.")):
        wasm.requested({"annotations": annotations})


def test_no_annotation_imports_nothing() -> None:
    assert wasm.handler({"annotations": {"x": "y"}}) is None


@pytest.mark.parametrize("text, want", [
    ("failed to parse WebAssembly module\n\nCaused by:\n    unexpected end-of-file (at offset 0xa)\n",
     "failed to parse WebAssembly module: unexpected end-of-file (at offset 0xa)"),
    ("error while executing at wasm backtrace:\n    0:     0x23 - <unknown>!<wasm function 0>\n\nCaused by:\n"
     "    wasm trap: wasm `unreachable` instruction executed\n",
     "wasm trap: wasm `unreachable` instruction executed"),
    ("expected `)`\n     --> <anon>:1:41\n      |\n    1 | (module (func\n      |         ^",
     "expected `)` at line 1 column 41"),
    ("outer\n\nCaused by:\n    0: middle\n    1: inner\n", "outer: middle: inner"),
    ("unknown import: `env::foo` has not been defined", "unknown import: `env::foo` has not been defined"),
    ("", "unknown error"),
])
def test_one_line(text: str, want: str) -> None:
    assert wasm.one_line(text) == want
