"""Checkpoints: one dict of state dicts and plain data, written atomically, loadable with weights_only=True."""
from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import torch

from .config import Config, config_from_dict
from .errors import CheckpointError, ConfigError
from .io import atomic_path
from .quantize import expand_state
from .tasks import get_task

# may differ when a fold or member is resumed: how it runs, and where its folder lies (a folder may be moved)
RUNTIME_KEYS = ("device", "workers", "preload", "amp", "channels_last", "project", "name")


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


def training_state(model, optimizer, scheduler, scaler, epoch: int, best_f1: float, config: Config,
                   mean, std, metrics: dict) -> dict:
    """What ``last.pt`` and ``best.pt`` hold after ``epoch``: the state dicts a resume continues from (``model``
    unwrapped from DDP), and the plain data inference needs (config, class names, normalisation)."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "epoch": epoch, "best_f1": best_f1, "config": config.to_dict(),
            "class_names": list(get_task(config.task).class_names), "mean": list(mean), "std": list(std),
            "metrics": {k: v for k, v in metrics.items() if v is not None}}


def restore_training_state(state: dict, model, optimizer, scheduler, scaler) -> tuple[int, float]:
    """Load a :func:`training_state` into the training objects; returns (the epoch to start at, the best val F1
    so far)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    return epochs_done(state), state["best_f1"]


def epochs_done(state: dict) -> int:
    """How many epochs the run had trained when ``state`` was saved."""
    return state["epoch"] + 1


def run_status(run_dir: Path, config: Config) -> str:
    """A fold's or an ensemble member's ``new`` (no last.pt), ``unfinished`` (fewer epochs than ``config.epochs``)
    or ``finished``, the test ``train --resume`` applies; one trained with other settings is an error naming them."""
    last = run_dir / "last.pt"
    if not last.is_file():
        return "new"
    state = load_checkpoint(last)
    before, now = config_from_dict(state["config"]).to_dict(), config.to_dict()  # keys added since: defaults
    differ = [k for k in now if k not in RUNTIME_KEYS and _plain(before.get(k)) != _plain(now[k])]
    if differ:
        shown = ", ".join(f"{k}={before.get(k)!r} (now {now[k]!r})" for k in differ[:3])
        raise ConfigError(f"{run_dir}: was trained with {shown}; resume with the same settings, or pass name= "
                          f"for a new folder")
    if epochs_done(state) < config.epochs:
        return "unfinished"
    try:  # a finished run is skipped, so what the commands load from it must load
        load_checkpoint(run_dir / "best.pt")
    except CheckpointError as err:
        raise CheckpointError(f"{err}; remove {run_dir} to train it again") from None
    return "finished"


def _plain(value):
    return list(value) if isinstance(value, (tuple, list)) else value


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
