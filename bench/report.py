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
    #: None when it could not be measured; ``note`` then says why.
    value: float | None
    unit: str
    target: str = "-"
    #: None: no target (or not measured).
    met: bool | None = None
    note: str = ""

    def formatted_value(self) -> str:
        if self.value is None:
            return self.note or "-"
        if self.unit in ("ms", "ratio"):
            return f"{self.value:,.2f}" if self.unit == "ratio" else f"{self.value:,.1f}"
        return f"{self.value:,.0f}"


def met_text(met: bool | None) -> str:
    return "-" if met is None else ("yes" if met else "NO")


def format_table(lines: list[Line]) -> str:
    header = ("measurement", "value", "unit", "target", "met?")
    rows = [
        (line.measurement, line.formatted_value(), line.unit, line.target, met_text(line.met))
        for line in lines
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    # Numbers right-aligned so their digits line up; text left-aligned.
    aligns = ["<", ">", "<", "<", "<"]

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
        f"{name} {_version(name)}" for name in ("celery", "kombu", "SQLAlchemy", "psycopg")
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
