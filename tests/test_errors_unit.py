"""pyouki.errors.reason: the one place an OSError becomes the lowercase reason of a message."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from pyouki.errors import reason


def test_reason_is_the_lowercase_errno_text() -> None:
    assert reason(OSError(errno.EACCES, os.strerror(errno.EACCES))) == "permission denied"
    assert reason(FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "/x")) == \
        "no such file or directory"


def test_reason_without_strerror_uses_the_text_or_the_type() -> None:
    assert reason(OSError("Bad Thing")) == "bad thing"
    assert reason(OSError()) == "oserror"


def test_no_module_keeps_a_private_copy() -> None:
    """Every message goes through errors.reason, so a change of wording is made once."""
    root = Path(__file__).resolve().parent.parent / "pyouki"
    copies = []
    for path in root.rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"def _?reason\(|\.strerror or ", text):
            line = text.count("\n", 0, m.start()) + 1
            where = f"{path.relative_to(root)}:{line}"
            # errors.reason itself; dbus words errors by errno (os.strerror), not by strerror
            if where.startswith(("errors.py", "dbus_native/connection.py")):
                continue
            copies.append(where)
    assert copies == []
