"""A CSV file with a header row: one integer label column, every other column a numeric feature.

Read with the standard csv module (no pandas). Errors name the file, the line (1-based,
counting the header, as an editor shows it) and the column. Blank lines are skipped; a
UTF-8 byte-order mark (as Excel writes) is ignored; names and values may carry spaces.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gradwell.data.checks import Part
from gradwell.data.splits import Source
from gradwell.errors import DataError, closest


@dataclass
class CsvPart(Part):
    """A Part whose positions are named by line number and column name."""

    lines: list[int]
    columns: list[str]
    label: str

    def where_x(self, i: int, j: int) -> str:
        return f"{self.x_name}, line {self.lines[i]}, column {self.columns[j]!r}"

    def where_y(self, i: int) -> str:
        return f"{self.y_name}, line {self.lines[i]}, column {self.label!r}"


def read_rows(path: Path) -> tuple[list[str] | None, list[list[str]], list[int]]:
    """The header, the non-blank rows and the line on which each row ends."""
    rows, lines = [], []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            for row in reader:
                if row:
                    rows.append(row)
                    lines.append(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot be read as UTF-8 CSV ({error})") from None
    return header, rows, lines


def check_header(path: Path, header: list[str] | None, label: str) -> list[str]:
    if header is None:
        raise DataError(f"{path} is empty; expected a header row naming the columns")
    columns = [name.strip() for name in header]
    for j, name in enumerate(columns):
        if not name:
            raise DataError(f"{path}: header column {j + 1} has no name")
        if columns.index(name) != j:
            raise DataError(f"{path}: header names column {name!r} twice")
    if label not in columns:
        raise DataError(
            f"{path} has no label column {label!r}{closest(label, columns)}; columns: {', '.join(columns)}; "
            "name the label column with label=NAME"
        )
    if len(columns) < 2:
        raise DataError(f"{path} has only the label column {label!r}; expected feature columns beside it")
    return columns


def number(path: Path, line: int, column: str, cell: str) -> float:
    """`cell` as Python's float reads it, the rule numpy applies to each string."""
    if not cell.strip():
        raise DataError(f"{path}, line {line}, column {column!r}: missing value")
    try:
        return float(cell)
    except ValueError:
        raise DataError(f"{path}, line {line}, column {column!r}: {cell!r} is not a number") from None


def parse(path: Path, columns: list[str], rows: list[list[str]], lines: list[int]) -> np.ndarray:
    """The table as float64 (rows, columns); numpy converts each cell with Python's float."""
    for row, line in zip(rows, lines, strict=True):
        if len(row) != len(columns):
            raise DataError(f"{path}, line {line}: {len(row)} fields, but the header has {len(columns)}")
    try:
        return np.array(rows, dtype=np.float64).reshape(len(rows), len(columns))
    except ValueError:
        for row, line in zip(rows, lines, strict=True):
            for column, cell in zip(columns, row, strict=True):
                number(path, line, column, cell)  # raises, naming the first cell numpy refused
        raise


def read_csv(path: str, *, label: str = "label") -> Source:
    """Every row a sample; `label` names the column of integer class indices 0..K-1."""
    file = Path(path)
    if file.is_dir():
        raise DataError(f"csv: {path!r} is a folder; give the path of a .csv file")
    if not file.is_file():
        raise DataError(f"csv: file {path!r} not found")
    header, rows, lines = read_rows(file)
    columns = check_header(file, header, label)
    table = parse(file, columns, rows, lines)
    j = columns.index(label)
    features = columns[:j] + columns[j + 1 :]
    x, y = np.delete(table, j, axis=1), table[:, j]
    return Source(train=CsvPart(x, y, str(file), str(file), lines=lines, columns=features, label=label))
