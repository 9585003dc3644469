"""Which Slicer the module runs in. Imported before anything else of the module, so it must
import on Slicer 5.8's Python 3.9 too (standard library only, no newer syntax): there it
explains, instead of failing to load.

Slicer 5.8 ships Python 3.9; MONAI 1.6 (the engine's networks) needs Python 3.10 and torch 2.8,
so its packages cannot be installed there. Slicer 5.10 ships Python 3.12.
"""

import sys
from typing import Optional, Sequence

MINIMUM_SLICER = (5, 10)
MINIMUM_PYTHON = (3, 10)


def unsupported_reason(python: Sequence[int] = tuple(sys.version_info[:2]), slicer: Optional[Sequence[int]] = None):
    """None where the module can run; else the one paragraph the panel shows instead."""
    python, slicer = tuple(python[:2]), tuple(slicer[:2]) if slicer else None
    if python >= MINIMUM_PYTHON and (slicer is None or slicer >= MINIMUM_SLICER):
        return None
    here = (
        f"Slicer {slicer[0]}.{slicer[1]} with Python {python[0]}.{python[1]}"
        if slicer
        else f"Python {python[0]}.{python[1]}"
    )
    return (
        f"BrainSegFounder needs 3D Slicer {MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]} or later (this is {here}). "
        f"Its models run on MONAI 1.6, which needs Python {MINIMUM_PYTHON[0]}.{MINIMUM_PYTHON[1]} or later "
        "(Slicer 5.8 ships Python 3.9). Install the current Slicer from https://download.slicer.org "
        "and this extension again."
    )
