"""What a run leaves behind besides checkpoints: results.csv, TensorBoard scalars, curves and confusion PNGs."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .io import atomic_write_csv
from .plots import plot_confusion, plot_curves

COLUMNS = ["epoch", "train_loss", "val_loss", "val_f1", "val_acc", "lr", "seconds", "images_per_s"]


class RunLog:
    def __init__(self, run_dir: Path, start_epoch: int = 0):
        self.run_dir = Path(run_dir)
        path = self.run_dir / "results.csv"
        rows = pd.read_csv(path) if path.is_file() and start_epoch > 0 else pd.DataFrame(columns=COLUMNS)
        self.rows = rows[rows["epoch"] < start_epoch].to_dict("records")  # epochs after last.pt are redone
        self._writer = None

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._writer

    def log_epoch(self, row: dict) -> None:
        self.rows.append({k: row.get(k) for k in COLUMNS})
        table = pd.DataFrame(self.rows, columns=COLUMNS)
        atomic_write_csv(self.run_dir / "results.csv", table)
        for key in COLUMNS[1:]:
            if row.get(key) is not None:
                self.writer.add_scalar(key, row[key], row["epoch"])
        self.writer.flush()
        plot_curves(table, self.run_dir / "curves.png")

    def log_confusion(self, matrix, class_names, title: str) -> None:
        plot_confusion(matrix, class_names, self.run_dir / "confusion.png", title=title)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
