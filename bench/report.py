"""The output: the machine the numbers come from, and the one table."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from sqlalchemy import Engine, text


@dataclass
class Line:
    """One measurement: a line of the table."""

    #: Starts with the item's id ("1a", "4c", ...), which the smoke test looks for.
    measurement: str
    #: None when it could not be measured; ``note`` then says why. The median
    #: of the rounds for a measurement taken in rounds (items 2 and 3).
    value: float | None
    unit: str
    target: str = "-"
    #: None: no target (or not measured).
    met: bool | None = None
    note: str = ""
    #: Lowest and highest value over the rounds, for a measurement taken in rounds.
    spread: tuple[float, float] | None = None
    #: CPU time per job in microseconds, over every process involved (``bench.cpu``).
    cpu_us: float | None = None

    def _number(self, value: float) -> str:
        if self.unit == "ratio":
            return f"{value:,.2f}"
        if self.unit == "ms":
            return f"{value:,.1f}"
        return f"{value:,.0f}"

    def formatted_value(self) -> str:
        if self.value is None:
            return self.note or "-"
        return self._number(self.value)

    def formatted_spread(self) -> str:
        if self.spread is None:
            return "-"
        low, high = self.spread
        return f"{self._number(low)}-{self._number(high)}"

    def formatted_cpu(self) -> str:
        return "-" if self.cpu_us is None else f"{self.cpu_us:,.0f}"


def met_text(met: bool | None) -> str:
    return "-" if met is None else ("met" if met else "NOT met")


def format_table(lines: list[Line]) -> str:
    header = ("measurement", "value", "unit", "range", "CPU µs/job", "target", "met?")
    rows = [
        (
            line.measurement,
            line.formatted_value(),
            line.unit,
            line.formatted_spread(),
            line.formatted_cpu(),
            line.target,
            met_text(line.met),
        )
        for line in lines
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    # Numbers right-aligned so their digits line up; text left-aligned.
    aligns = ["<", ">", "<", ">", ">", "<", "<"]

    def render(row: tuple[str, ...]) -> str:
        cells = [
            f"{cell:{align}{width}}"
            for cell, align, width in zip(row, aligns, widths, strict=True)
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([render(header), rule, *(render(row) for row in rows)])


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between the closest ranks (numpy's default)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _ram() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
    except OSError:
        pass
    return "unknown RAM"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe_machine(engine: Engine, redis_version: str) -> str:
    """What the numbers were measured on, as printed above the table."""
    # Other work on the machine skews every figure: say how busy it was.
    load = os.getloadavg()[0]
    with engine.connect() as connection:
        postgresql = connection.execute(text("SHOW server_version")).scalar_one()
    packages = ", ".join(
        f"{name} {_version(name)}"
        for name in ("celery", "kombu", "SQLAlchemy", "psycopg", "procrastinate", "pgqueuer")
    )
    return "\n".join(
        [
            f"machine:  {os.cpu_count()} cores, {_cpu_model()}, {_ram()}; "
            f"load average at start {load:.2f}",
            f"software: Python {platform.python_version()}, PostgreSQL {postgresql}, "
            f"Redis {redis_version}",
            f"packages: {packages}",
        ]
    )
