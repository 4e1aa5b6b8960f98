"""The training and validation logs: append-only CSV files (train_log.csv, val_log.csv)."""

from __future__ import annotations

import csv
import io
import os
from typing import Any, Optional

from ..files import atomic_write_text


class CsvLog:
    """Append-only CSV whose header is fixed by its first row; truncate() drops rows past a checkpoint."""

    def __init__(self, path: str, enabled: bool):
        self.path, self.enabled = path, enabled
        self.rows = 0
        self.header: Optional[list] = None
        if enabled and os.path.isfile(path):
            with open(path, newline="") as f:
                r = list(csv.reader(f))
            if r:
                self.header, self.rows = r[0], len(r) - 1

    def truncate(self, rows: int) -> None:
        """Keep the header and the first `rows` rows (a resumed run drops what its checkpoint did not see)."""
        if not self.enabled or not os.path.isfile(self.path):
            self.rows = 0
            return
        with open(self.path, newline="") as f:
            r = list(csv.reader(f))
        keep = r[: rows + 1]
        buf = io.StringIO()
        csv.writer(buf).writerows(keep)
        atomic_write_text(buf.getvalue(), self.path)
        self.header = keep[0] if keep else None
        self.rows = max(len(keep) - 1, 0)

    def write(self, row: dict) -> None:
        """Append `row` (floats to 6 significant digits); a key the header lacks widens it (the file is
        rewritten). Off the main process only the row count moves."""
        if not self.enabled:
            self.rows += 1
            return
        new = self.header is None
        if new:
            self.header = list(row)
        elif any(k not in self.header for k in row):
            # new columns (e.g. a later GRIFFIN stage's losses): rewrite the file with the wider header
            self.header = self.header + [k for k in row if k not in self.header]
            with open(self.path, newline="") as f:
                old = list(csv.reader(f))[1:]
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(self.header)
            for r in old:
                w.writerow(r + [""] * (len(self.header) - len(r)))
            atomic_write_text(buf.getvalue(), self.path)
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(self.header)
            w.writerow([_fmt(row.get(k, "")) for k in self.header])
        self.rows += 1


def _fmt(v) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return v
