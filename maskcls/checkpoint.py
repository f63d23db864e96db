"""Checkpoints: one dict of state dicts and plain data, written atomically, loadable with weights_only=True."""
from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import torch

from .config import Config, config_from_dict
from .errors import CheckpointError
from .io import atomic_path
from .quantize import expand_state


def save_checkpoint(path: Path, **state) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        folder = path.parent
        if folder.is_dir() and not (folder / "config.yaml").is_file() and not any(folder.glob("*.pt")):
            raise CheckpointError(f"{folder}: not a maskcls run (no {path.name}, no config.yaml)")
        raise CheckpointError(f"{path}: checkpoint does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's own messages are paragraphs (zip readers, weights_only advice)
        with open(path, "rb") as file:
            head = file.read(4)
        # torch.save writes a zip: one that does not read is cut short, unless it unpickles Python objects
        damaged = head == b"" or (head == b"PK\x03\x04" and not isinstance(err, pickle.UnpicklingError))
        raise CheckpointError(f"checkpoint {path} is damaged (truncated?)" if damaged else
                              f"{path}: not a maskcls checkpoint") from None
    if not isinstance(state, dict) or "config" not in state:
        raise CheckpointError(f"{path}: not a maskcls checkpoint (no config inside)")
    if isinstance(state.get("model"), dict):
        state["model"] = expand_state(state["model"])  # a bundled checkpoint's packed weights, as float32
    return state


def checkpoint_config(state: dict) -> Config:
    return config_from_dict(state["config"])


def claim_run_dir(project: Path, task: str, name: str = "") -> Path:
    """``runs/<task>/<name>`` (created if needed), or, without a name, the first of exp, exp2, exp3, ... that
    this call creates itself: ``mkdir`` either makes a folder or fails, so two trainings started together
    never share one."""
    base = Path(project) / task
    if name:  # the user's choice, kept as given: a second run of that name writes into it
        (base / name).mkdir(parents=True, exist_ok=True)
        return base / name
    base.mkdir(parents=True, exist_ok=True)
    index = 1
    while True:
        run_dir = base / ("exp" if index == 1 else f"exp{index}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:  # taken (by a folder, a file, or a training started a moment earlier)
            index += 1


def load_model(run_or_checkpoint: Path, which: str = "best"):
    """(model in eval mode, config, checkpoint dict) from a run folder (``best.pt``/``last.pt``) or a .pt file."""
    from .models import build_model

    path = Path(run_or_checkpoint)
    if path.is_dir():
        path = path / f"{which}.pt"
    state = load_checkpoint(path)
    config = checkpoint_config(state)
    model = build_model(dataclasses.replace(config, pretrained="none"))  # the weights come from the checkpoint
    model.load_state_dict(state["model"])
    return model.eval(), config, state
