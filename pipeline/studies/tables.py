"""CSV tables of the studies: long tables for reading, wide ones for `dvc plots`.

Numbers are written with 6 significant digits, so a table is identical from run to run even
if a multi-threaded BLAS sums in another order and moves the last bits.
"""

import csv
import math
from pathlib import Path


def _cell(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    """Rows of dicts to CSV, columns in the given order (else the first row's)."""
    columns = columns or list(rows[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows([_cell(row[c]) for c in columns] for row in rows)


def pivot(rows: list[dict], x: str, value: str, series) -> list[dict]:
    """Long rows to wide: one row per x, one column per series name.

    `series(row)` names the line a row belongs to, e.g. "xavier_tanh"; dvc plots draws one
    line per column listed under `y:` in dvc.yaml.
    """
    wide: dict = {}
    for row in rows:
        wide.setdefault(row[x], {x: row[x]})[series(row)] = row[value]
    return [wide[key] for key in sorted(wide)]
