"""Shared fixtures: one tiny synthetic dataset per session, and writable copies of it to break."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from maskcls.data.sample import make_sample_dataset

SAMPLE_PEOPLE, SAMPLE_EVAL_PEOPLE = 12, 4


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory) -> Path:
    """A valid dataset in the competition layout (12 train, 4 eval people). Read-only: copy it to break it."""
    return make_sample_dataset(tmp_path_factory.mktemp("sample") / "faces", people=SAMPLE_PEOPLE,
                               eval_people=SAMPLE_EVAL_PEOPLE)


@pytest.fixture
def dataset_copy(sample_dataset, tmp_path) -> Path:
    """A fresh copy of the sample dataset that a test may break."""
    return Path(shutil.copytree(sample_dataset, tmp_path / "faces"))


def profile_folders(root: Path) -> list[Path]:
    """The train profile folders, sorted by name."""
    return sorted(p for p in (root / "train" / "images").iterdir() if p.is_dir())


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Keep only the first ``keep`` fraction of a file's bytes (a half-copied image)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def edit_csv(path: Path, edit) -> None:
    """Read a CSV as strings, let ``edit(table)`` return the new table, write it back."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(table).to_csv(path, index=False)
