"""The training logs: CSV files that read as one run across resumes, and TensorBoard when it is installed."""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class CsvLog:
    """Rows appended to a CSV file; on resume, rows past the checkpoint's step are dropped first so the log
    reads as one run."""

    def __init__(self, path: Path, fields: list[str]) -> None:
        self.path = path
        self.fields = fields

    def truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        with open(self.path, newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= step]
        with open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row: Mapping[str, Any]) -> None:
        new = not self.path.is_file()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in self.fields})


def tensorboard_writer(folder: Path) -> Any:
    """A TensorBoard ``SummaryWriter`` logging to ``folder``, or None without the optional ``log`` extra."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional (the "log" extra)
        log.info("tensorboard is not installed; logging to CSV only")
        return None
    return SummaryWriter(log_dir=str(folder))
