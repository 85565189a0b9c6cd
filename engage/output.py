"""What commands print on stdout: compact tables that fit an 80-column terminal, or one JSON
document for scripts (`--json`), and nothing else, so that `engage X --json | jq` works.

Progress, notes and errors go to stderr (`engage.cli_support.console`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Column, Table


def stdout() -> Console:
    """The console of a command's result: stdout, as wide as the terminal (80 when piped)."""
    return Console(highlight=False)


def text(header: str) -> Column:
    """A text column: it wraps before any number column is cut."""
    return Column(header, overflow="fold")


def number(header: str) -> Column:
    """A number column: right-aligned and never wrapped, so no figure ends in `…`."""
    return Column(header, justify="right", no_wrap=True)


def table(*columns: str | Column, title: str | None = None, show_header: bool = True) -> Table:
    """A table without vertical rules (they cost 3 columns each): what fits 80 columns."""
    return Table(
        *columns,
        title=title,
        show_header=show_header,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )


def fmt(value: float | None, spec: str = ".4f") -> str:
    """A metric for a table cell: `-` when it is missing or undefined (NaN)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def plain(value: Any) -> Any:
    """`value` as strict JSON data: NaN and infinities become null (a one-class test set has
    no ROC-AUC), numpy values Python ones, paths strings."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):  # scalar or array
        return plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def print_json(document: Any) -> None:
    """One JSON document on stdout: the whole of a `--json` command's stdout."""
    print(json.dumps(plain(document), allow_nan=False, default=str))
