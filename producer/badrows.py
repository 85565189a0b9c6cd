"""Bookkeeping for input rows that cannot become events: counted, a few kept for the report."""

from __future__ import annotations

from dataclasses import dataclass, field

KEEP_FIRST = 10


@dataclass(frozen=True)
class BadRow:
    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


class BadRowError(ValueError):
    """Raised in strict mode on the first bad row."""

    def __init__(self, row: BadRow) -> None:
        super().__init__(f"bad input row (strict mode) at {row}")
        self.row = row


@dataclass
class BadRows:
    """Counts bad rows; keeps the first `keep` of them with their file and line."""

    strict: bool = False
    keep: int = KEEP_FIRST
    count: int = 0
    examples: list[BadRow] = field(default_factory=list)

    def add(self, file: str, line: int, reason: str) -> None:
        row = BadRow(file, line, reason)
        if self.strict:
            raise BadRowError(row)
        self.count += 1
        if len(self.examples) < self.keep:
            self.examples.append(row)

    def extend(self, rows: list[BadRow]) -> None:
        """Add one file's rows in line order, so strict mode raises on the earliest line."""
        for row in sorted(rows, key=lambda r: r.line):
            self.add(row.file, row.line, row.reason)
