"""Names people give (case ids, model names, run names) that become file or folder names.

Every such name is checked here, in one place: it can never point outside its folder, and it is
a file name on every system the project runs on (Windows included).
"""

from __future__ import annotations

import re

from .errors import UserError

_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# Names Windows reserves for devices, with any extension and in any case ("con.txt" too).
_WINDOWS_RESERVED = re.compile(r"(CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9])(\..*)?", re.IGNORECASE)


def plain_name(name: str, what: str) -> str:
    """A user-given name used as a file or folder name: it can never point outside its folder."""
    if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name) or name.endswith("."):
        raise UserError(
            f"{what} {name!r} is not usable as a folder name; use letters, digits, '-', '_' "
            "and '.', starting with a letter or digit"
        )
    if _WINDOWS_RESERVED.fullmatch(name):
        raise UserError(
            f"{what} {name!r} is not usable as a folder name: Windows reserves it for a device; choose another"
        )
    return name
