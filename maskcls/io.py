"""Atomic writes: a crash never leaves a half-written file where a good one was."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def is_main_process() -> bool:
    """False in the ranks > 0 of a torchrun job: only rank 0 writes outputs."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_csv(path: str | Path, frame, **kwargs) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, **kwargs)


def note_path(csv_path: str | Path) -> Path:
    """The JSON note beside an output CSV (predictions, detections): what made it, from which runs and data."""
    return Path(csv_path).with_suffix(".json")
