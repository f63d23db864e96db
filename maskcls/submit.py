"""Inference: eval images (or a run's own validation people) through one or several runs of a task, with
test-time augmentation, voted into one probability table, written as CSV with a JSON note beside it.

The table has one row per image: ``ImageID`` (eval, in ``eval/info.csv`` order) or ``path`` (val, relative
to the data folder, so runs line up image by image), ``p0..pK-1``, and for val the task's true ``target``
and the 18-class ``label``. Val truth uses the competition's age bands (``DEFAULT_AGE_BOUNDS``) whatever a
run trained with, so tuning and scoring see the labels the leaderboard sees. A submission never reads
``eval/labels.csv``: eval images come from ``eval/info.csv`` only.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .checkpoint import load_model
from .config import Config, ConfigError
from .data import DEFAULT_AGE_BOUNDS, NUM_CLASSES, DataError, load_train, read_eval_images, split_images
from .data.dataset import ImageDataset
from .engine import Engine, pick_device, predict_logits
from .io import atomic_path, atomic_write_text, is_main_process
from .tasks import get_task
from .transforms import build_transforms
from .years import AGE_COLUMN, predict_probs_and_age, reports_age

SPLITS = ("eval", "val")
VOTES = ("soft", "hard")  # soft: mean probability; hard: majority of each run's argmax
KEY_COLUMNS = {"eval": "ImageID", "val": "path"}


@dataclass
class Run:
    """A trained run ready for inference: its folder, model (eval mode), config and normalisation."""

    run_dir: Path
    model: nn.Module
    config: Config
    mean: tuple[float, ...]
    std: tuple[float, ...]
    which: str = "best"  # the checkpoint it came from: <which>.pt (and <which>.onnx once exported)

    @property
    def task(self) -> str:
        return self.config.task


def load_run(run_dir: str | Path, which: str = "best") -> Run:
    if not Path(run_dir).exists():
        raise DataError(f"{run_dir}: run folder does not exist")
    model, config, state = load_model(Path(run_dir), which)
    return Run(Path(run_dir), model, config, tuple(state["mean"]), tuple(state["std"]), which)


RUNTIMES = ("torch", "onnx")  # `--engine`: PyTorch eager, or the run's exported ONNX file on onnxruntime


def inference_model(run: Run, runtime: str = "torch") -> nn.Module:
    """What predicts for ``run``: its PyTorch model, or its ``<which>.onnx`` (``maskcls export onnx``) on
    onnxruntime behind the same interface (images in, logits out), so TTA and voting do not change."""
    if runtime == "torch":
        return run.model
    if runtime == "onnx":
        from .export import load_onnx_model

        return load_onnx_model(run)
    raise ValueError(f"engine {runtime!r}: expected one of {', '.join(RUNTIMES)}")


# --- test-time augmentation -------------------------------------------------------------------------

def _flip(images: torch.Tensor) -> torch.Tensor:
    return torch.flip(images, dims=[3])


def _centre_zoom(fraction: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Centre crop of ``fraction`` of each side, resized back: a slightly zoomed-in view."""

    def view(images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        crop_h, crop_w = max(1, round(height * fraction)), max(1, round(width * fraction))
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        crop = images[..., top:top + crop_h, left:left + crop_w]
        # normalisation is per-channel affine, so resizing the normalised tensor equals resizing the image
        return nn.functional.interpolate(crop.float(), size=(height, width), mode="bilinear",
                                         align_corners=False, antialias=True).to(images.dtype)

    return view


def build_views(names: Sequence[str]) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """The original view, then each named one: ``flip`` (horizontal), ``scale<percent>`` (centre zoom)."""
    views = [("orig", lambda images: images)]
    for name in dict.fromkeys(names):  # in order, without repeats
        match = re.fullmatch(r"scale(\d+)", name)
        if name == "flip":
            views.append((name, _flip))
        elif match and 1 <= int(match[1]) < 100:
            views.append((name, _centre_zoom(int(match[1]) / 100)))
        elif name != "orig":
            raise ConfigError(f"tta view {name!r}: expected flip or scale<percent> with percent in 1..99 "
                              f"(e.g. scale90)")
    return views


def tta_views(config: Config, tta: bool) -> tuple[str, ...]:
    """With ``tta``: the flip always, then the config's views; without: none (the original only)."""
    return ("flip", *config.tta) if tta else ()


class TTAModel(nn.Module):
    """Returns the log of the softmax averaged over views, so argmax and ``exp`` give the averaged prediction."""

    def __init__(self, model: nn.Module, views: Sequence[tuple[str, Callable]]):
        super().__init__()
        self.model = model
        self.views = list(views)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([self.model(view(images)).float().softmax(1) for _, view in self.views]).mean(0)
        return probs.clamp_min(1e-12).log()


# --- images and probabilities ---------------------------------------------------------------------

def image_table(config: Config, split: str, data_dir: str | Path) -> pd.DataFrame:
    """Rows to predict: key column, ``path`` to open, and for val ``target`` (the task's) and ``label`` (18-class)."""
    data_dir = Path(data_dir)
    if split == "eval":
        images = read_eval_images(data_dir)  # eval/info.csv and eval/images only
        return pd.DataFrame({"ImageID": images["ImageID"], "file": images["path"]})
    if split != "val":
        raise ValueError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    images = load_train(data_dir, DEFAULT_AGE_BOUNDS, config.label_fixes)
    _, val = split_images(images, config.folds, config.fold, config.seed)
    if val.empty:
        raise DataError(f"{data_dir}: fold {config.fold} of {config.folds} holds no validation images")
    return pd.DataFrame({"path": [Path(p).relative_to(data_dir).as_posix() for p in val["path"]],
                         "file": val["path"], "target": val[get_task(config.task).label_column],
                         "label": val["label"]})


def build_dataset(config: Config, files: Sequence[str], mean, std) -> ImageDataset:
    """Eval-mode transforms (resize, normalise) and the config's image loader (face crops)."""
    from .data.crop import build_image_loader

    transform = build_transforms(config.augment, config.img_size, mean, std, train=False)
    return ImageDataset(list(files), None, transform, build_image_loader(config))


def predict_probs(model: nn.Module, dataset, engine: Engine, views=None, batch_size: int = 64,
                  desc: str = "predict") -> np.ndarray:
    """(images, classes) probabilities in dataset order, averaged over ``views`` (default: the original only)."""
    tta = engine.setup_model(TTAModel(model, views or build_views(())))
    loader = engine.loader(dataset, batch_size, train=False)
    log_probs, _ = predict_logits(tta, loader, engine, desc=desc)
    return log_probs.exp().numpy()


def vote(probs: np.ndarray, how: str = "soft") -> np.ndarray:
    """(runs, images, classes) -> (images, classes). NaN rows are runs that did not predict that image.

    soft: the mean probability. hard: each run votes for its argmax; the result is the vote share with the
    mean probability mixed in at weight 1/(runs+1), so a tie goes to the more confident class and the argmax
    is always a majority class (one vote outweighs any difference in mean probability).
    """
    probs = np.asarray(probs, dtype=np.float64)
    present = ~np.isnan(probs).any(axis=2)  # (runs, images)
    if not present.any(axis=0).all():
        raise ValueError("every image needs a prediction from at least one run")
    count = present.sum(axis=0)[:, None]
    mean = np.where(present[..., None], probs, 0.0).sum(axis=0) / count
    if how == "soft":
        return mean
    if how != "hard":
        raise ValueError(f"vote {how!r}: expected one of {', '.join(VOTES)}")
    winners = np.where(present, np.nan_to_num(probs, nan=-1.0).argmax(axis=2), -1)
    votes = np.stack([(winners == k).sum(axis=0) for k in range(probs.shape[2])], axis=1)
    return (votes + mean) / (count + 1)


def _engine(config: Config, device: str) -> Engine:
    return Engine(pick_device(device), config.amp, config.channels_last, config.workers)


def predict_run(run: Run, split: str, data_dir: str | Path, tta: bool = False, device: str = "auto",
                runtime: str = "torch") -> pd.DataFrame:
    """One run's table: key column, ``p0..``, and for val ``target``/``label``."""
    if split == "val" and run.config.val != "fold":
        raise DataError(f"{run.run_dir}: trained on everyone (val={run.config.val}): it has no validation people")
    config = dataclasses.replace(run.config, data_dir=str(data_dir))  # crops and caches follow the data
    rows = image_table(config, split, data_dir)
    views = build_views(tta_views(config, tta))
    dataset = build_dataset(config, rows["file"], run.mean, run.std)
    model, desc = inference_model(run, runtime), f"{config.task} {split} {run.run_dir.name}"
    table = rows.drop(columns="file")
    if reports_age(model):  # age_target=years: the expected age in years too, from the same pass
        probs, ages = predict_probs_and_age(model, dataset, _engine(config, device), views, config.batch_size, desc)
        table.insert(1, AGE_COLUMN, ages)
    else:
        probs = predict_probs(model, dataset, _engine(config, device), views, config.batch_size, desc=desc)
    for k in range(probs.shape[1]):
        table.insert(1 + k, f"p{k}", probs[:, k])
    return table


def predict_runs(run_dirs: Sequence[str | Path], split: str, data_dir: str | Path, tta: bool = False,
                 how: str = "soft", which: str = "best", device: str = "auto", task: str | None = None,
                 runtime: str = "torch"):
    """(table, note): the runs' predictions voted per image.

    For val each run predicts its own held-out people, and an image is voted over the runs that held it
    out: runs of one fold give an ensemble, runs of every fold give out-of-fold predictions for everyone.
    """
    if not run_dirs:
        raise DataError("no run given")
    runs, tables = [], []
    for run_dir in run_dirs:
        run = load_run(run_dir, which)
        if task is not None and run.task != task:
            raise DataError(f"{run_dir}: is a {run.task} run, not {task}")
        if runs and run.task != runs[0].task:
            raise DataError(f"{run_dir}: is a {run.task} run, {runs[0].run_dir} a {runs[0].task} run; "
                            f"vote only runs of one task")
        runs.append(run)
        tables.append(predict_run(run, split, data_dir, tta, device, runtime))
        run.model = None  # one model in memory at a time
    return merge_tables(tables, [r.run_dir for r in runs], split, how), {
        "task": runs[0].task, "split": split, "runs": [str(r.run_dir.resolve()) for r in runs], "which": which,
        "vote": how, "tta": tta, "views": [name for name, _ in build_views(tta_views(runs[0].config, tta))],
        "engine": runtime, "data_dir": str(Path(data_dir).resolve())}


def merge_tables(tables: Sequence[pd.DataFrame], names: Sequence, split: str, how: str = "soft") -> pd.DataFrame:
    """Vote per-run tables image by image (keyed, in order of first appearance); their truth must agree."""
    key = KEY_COLUMNS[split]
    prob_columns = [c for c in tables[0].columns if re.fullmatch(r"p\d+", c)]
    keys = list(dict.fromkeys(k for table in tables for k in table[key]))
    stacked = np.stack([table.set_index(key)[prob_columns].reindex(keys).to_numpy(dtype=np.float64)
                        for table in tables])
    out = pd.DataFrame({key: keys})
    for column, values in zip(prob_columns, vote(stacked, how).T):
        out[column] = values
    if all(AGE_COLUMN in table for table in tables):  # the mean expected age over the runs that predicted it
        out[AGE_COLUMN] = np.nanmean(np.stack([t.set_index(key)[AGE_COLUMN].reindex(keys) for t in tables]), axis=0)
    for column in ("target", "label"):
        if column in tables[0]:
            truth = pd.concat([t.set_index(key)[column] for t in tables])
            disagree = truth.groupby(level=0).nunique()
            if (disagree > 1).any():
                raise DataError(f"{names[0]}: runs disagree on the {column} of {disagree[disagree > 1].index[0]} "
                                f"(different label_fixes?)")
            out[column] = truth.groupby(level=0).first().reindex(keys).to_numpy()
    return out


def default_output(run_dirs: Sequence[str | Path], split: str, tta: bool, how: str) -> Path:
    """``<first run>/pred_<split>[_tta][_<vote><runs>].csv``."""
    suffix = f"_{how}{len(run_dirs)}" if len(run_dirs) > 1 else ""
    return Path(run_dirs[0]) / f"pred_{split}{'_tta' if tta else ''}{suffix}.csv"


def note_path(csv_path: str | Path) -> Path:
    """The JSON note beside a prediction CSV: task, split, runs, views, vote, data folder."""
    return Path(csv_path).with_suffix(".json")


def write_predictions(table: pd.DataFrame, path: str | Path, note: dict) -> Path:
    if not is_main_process():  # under torchrun every rank holds the same table; one writes it
        return Path(path)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    atomic_write_text(note_path(path), json.dumps(note, indent=1) + "\n")
    return Path(path)


# --- the submit command -----------------------------------------------------------------------------

def newest_run(project: str | Path, task: str, which: str = "best") -> Path:
    """The run folder under ``<project>/<task>/`` whose ``best.pt`` (or ``which``) was written last."""
    folder = Path(project) / task
    runs = [d for d in folder.iterdir() if (d / f"{which}.pt").is_file()] if folder.is_dir() else []
    if not runs:
        raise DataError(f"{folder}: no run with a {which}.pt; train one (maskcls train {task}) or pass --{task} RUN")
    return max(runs, key=lambda d: (d / f"{which}.pt").stat().st_mtime)


def common_data_dir(run_dirs: Sequence[str | Path], which: str = "best") -> Path:
    """The data folder every run was trained on; refuses runs that disagree (pass --data-dir then)."""
    from .checkpoint import checkpoint_config, load_checkpoint

    found = {}
    for run_dir in run_dirs:
        path = Path(run_dir) / f"{which}.pt" if Path(run_dir).is_dir() else Path(run_dir)
        found.setdefault(Path(checkpoint_config(load_checkpoint(path)).data_dir).resolve(), run_dir)
    if len(found) > 1:
        (a, run_a), (b, run_b) = list(found.items())[:2]
        raise DataError(f"{run_b}: trained on {b}, {run_a} on {a}; pass --data-dir")
    return next(iter(found))


def make_submission(runs: dict[str, list[Path]], out: Path, data_dir: Path | None = None, tta: bool = False,
                    bias_option: str | None = None, which: str = "best", device: str = "auto") -> list[str]:
    """``maskcls submit``: predict eval with each task's runs (probability CSVs into the run folders),
    combine with the tuned bias when there is one, write ``out`` atomically. Returns the lines to print."""
    from .combine import answer_counts, predictions_from_table, resolve_bias, submission, write_submission

    data_dir = Path(data_dir) if data_dir else common_data_dir([r for rs in runs.values() for r in rs], which)
    # settle the bias before the slow part, so a bad --bias fails at once
    bias, which_bias = resolve_bias(bias_option, {task: [str(Path(r).resolve()) for r in rs] for task, rs in runs.items()})
    lines, predictions = [f"data: {data_dir}"], {}
    for task in ("mask", "gender", "age"):
        table, note = predict_runs(runs[task], "eval", data_dir, tta, "soft", which, device, task=task)
        path = write_predictions(table, default_output(runs[task], "eval", tta, "soft"), note)
        predictions[task] = predictions_from_table(table, task, path, note)
        used = ", ".join(map(str, runs[task]))
        lines.append(f"{task}: {used} ({which}.pt; views {'+'.join(note['views'])}) -> {path}")
    ids = read_eval_images(data_dir)["ImageID"].tolist()
    frame = submission(predictions, ids, data_dir / "eval" / "info.csv", None if bias is None else bias.values)
    write_submission(frame, out)
    return lines + [which_bias, f"wrote {out}: {len(frame)} images in the order of {data_dir / 'eval' / 'info.csv'}",
                    answer_counts(frame["ans"])]


def make_joint_submission(runs: list[Path], out: Path, data_dir: Path | None = None, tta: bool = False,
                          which: str = "best", device: str = "auto") -> list[str]:
    """The single 18-class model's submission: the argmax of its (voted) probabilities, in info.csv order."""
    from .combine import answer_counts, write_submission

    data_dir = Path(data_dir) if data_dir else common_data_dir(runs, which)
    table, note = predict_runs(runs, "eval", data_dir, tta, "soft", which, device, task="joint")
    path = write_predictions(table, default_output(runs, "eval", tta, "soft"), note)
    probs = table[[f"p{k}" for k in range(NUM_CLASSES)]].to_numpy()
    frame = pd.DataFrame({"ImageID": table["ImageID"], "ans": probs.argmax(1)})
    write_submission(frame, out)
    return [f"joint: {', '.join(map(str, runs))} ({which}.pt; views {'+'.join(note['views'])}) -> {path}",
            f"wrote {out}: {len(frame)} images in the order of {data_dir / 'eval' / 'info.csv'}",
            answer_counts(frame["ans"])]
