"""What the benchmark scripts share: the machine description, medians and the result table."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
if SRC.is_dir() and str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))  # `python bench/x.py` from a checkout without an installed groupvpn


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit(f"{Path(sys.argv[0]).name}: needs root (it builds network namespaces)")


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _command_version(*argv: str) -> str:
    try:
        done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        return "not installed"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) else "unknown"


def machine(*extra_tools: Sequence[str]) -> list[str]:
    """Lines saying when and on what a run happened; ``extra_tools`` are version commands to quote."""
    from cryptography.hazmat.backends.openssl.backend import backend

    lines = [
        f"date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        (
            f"machine: {_cpu_model()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
            f"load average at start {' '.join(f'{load:.2f}' for load in os.getloadavg())}"
        ),
        (
            f"python: {platform.python_version()}, cryptography {_version('cryptography')} "
            f"({backend.openssl_version_text()}), scapy {_version('scapy')}"
        ),
    ]
    lines += [f"{tool[0]}: {_command_version(*tool)}" for tool in extra_tools]
    return lines


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def ratio(value: float, baseline: float) -> str:
    """``value`` as a multiple of the baseline measured in the same run."""
    return f"{value / baseline:.3g}×" if baseline else "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (pastes straight into docs/performance.md)."""
    cells = [list(headers), *[list(row) for row in rows]]
    widths = [max(len(row[c]) for row in cells) for c in range(len(headers))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
