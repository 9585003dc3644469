"""Names people give (case ids, model names) that become file or folder names."""

from __future__ import annotations

import re

from .errors import UserError

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def plain_name(name: str, what: str) -> str:
    """A user-given name used as a file or folder name: it can never point outside its folder."""
    if not _PLAIN_NAME.match(name or "") or name in (".", ".."):
        raise UserError(
            f"{what} {name!r} is not usable as a folder name; use letters, digits, '-', '_' "
            "and '.', starting with a letter or digit"
        )
    return name
