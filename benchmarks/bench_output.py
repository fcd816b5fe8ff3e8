"""What the wall-time benchmarks (plan_jobs.py, specialists_workers.py) print and write: the markdown table, then,
with ``--out FILE.md``, the table plus the command that made it, and the rows as JSON beside it (FILE.json)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def print_and_write(lines: list[str], rows: list[dict[str, Any]], out: str | None) -> None:
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\nCommand: `python " + " ".join(sys.argv) + "`\n")
        Path(out).with_suffix(".json").write_text(json.dumps(rows, indent=2))
