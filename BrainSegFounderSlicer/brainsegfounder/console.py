"""What the command prints for people: small tables with full names, abbreviations in parentheses."""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

from .labels import REGION_NAMES


def _full_name(key: str, name: str) -> str:
    return name if name == key else f"{name} ({key})"


def volume_table(regions: Mapping[str, dict]) -> str:
    """Region volumes of a summary's ``regions``, one per line."""
    rows = [(_full_name(key, r.get("name", key)), f"{r['volume_ml']:.1f} mL") for key, r in regions.items()]
    return _table(("region", "volume"), rows)


def dice_table(dice: Dict[str, float]) -> str:
    rows = [(_full_name(key, REGION_NAMES.get(key, key)), f"{value:.4f}") for key, value in dice.items()]
    return _table(("region", "Dice"), rows)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [f"  {header[0]:<{widths[0]}}  {header[1]:>{widths[1]}}"]
    lines += [f"  {a:<{widths[0]}}  {b:>{widths[1]}}" for a, b in rows]
    return "\n".join(lines)


def uncertain_line(uncertainty: Optional[Mapping]) -> str:
    """A summary's uncertain volume per region on one line ('' without an uncertainty map)."""
    if not uncertainty:
        return ""
    parts = ", ".join(f"{name} {r['uncertain_ml']:.1f} mL" for name, r in uncertainty["regions"].items())
    return f"\nuncertain (flip variance >= {uncertainty['uncertain_above']}): {parts}"
