"""The figures table: every row is printed as soon as it is measured, and again in the summary."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    xs = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(xs)))
    return xs[min(rank, len(xs)) - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


@dataclasses.dataclass
class Row:
    section: str
    metric: str
    n: str
    p50: str
    p90: str
    p99: str
    max: str
    target: str = ""
    note: str = ""


HEADER = Row("section", "metric", "n", "p50/value", "p90", "p99", "max", "target", "note")
WIDTHS = (7, 62, 6, 10, 8, 8, 8, 14, 0)
NUMERIC = range(2, 7)  # right-aligned columns


def format_row(row: Row) -> str:
    cells = [row.section, row.metric, row.n, row.p50, row.p90, row.p99, row.max, row.target, row.note]
    parts = [
        cell.rjust(width) if i in NUMERIC else cell.ljust(width)
        for i, (cell, width) in enumerate(zip(cells, WIDTHS, strict=True))
    ]
    return "  ".join(parts).rstrip()


def print_rows(rows: Sequence[Row]) -> None:
    for row in rows:
        print(format_row(row), flush=True)


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)
    print("   (latencies in ms)", flush=True)
    print(format_row(HEADER), flush=True)


class Report:
    """Rows in measuring order; a ``quiet`` report holds rows back until another report adopts them."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.rows: list[Row] = []
        self.quiet = quiet

    def dist(self, section: str, metric: str, samples: Sequence[float], target: str = "", note: str = "") -> None:
        """Adds a latency distribution (samples in seconds), shown in ms."""
        if samples:
            row = Row(
                section,
                metric,
                str(len(samples)),
                ms(pct(samples, 50)),
                ms(pct(samples, 90)),
                ms(pct(samples, 99)),
                ms(max(samples)),
                target,
                note,
            )
        else:
            row = Row(section, metric, "0", "-", "-", "-", "-", target, note or "no samples")
        self._add(row)

    def value(self, section: str, metric: str, value: str, target: str = "", note: str = "") -> None:
        self._add(Row(section, metric, "", value, "", "", "", target, note))

    def adopt(self, other: Report) -> None:
        for row in other.rows:
            self._add(row)

    def _add(self, row: Row) -> None:
        self.rows.append(row)
        if not self.quiet:
            print_rows([row])

    def summary(self) -> None:
        print("\n== summary (every figure above, in one table; latencies in ms)")
        print_rows([HEADER, *self.rows])
