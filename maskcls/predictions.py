"""Prediction tables: the probabilities of one task's runs per image, voted into one table, written as CSV with a
JSON note beside it (``maskcls predict``, ``submit``, ``cv``'s ``oof.csv``), and read back and checked
(``combine``, ``audit``). Below every command that writes or reads them.

The table has one row per image: ``ImageID`` (eval, in ``eval/info.csv`` order) or ``path`` (val, relative
to the data folder, so runs line up image by image), ``p0..pK-1``, ``age_years`` where the age runs have a year
head (``age_target: years``), and for val the task's true ``target`` and the 18-class ``label``. Val truth uses
the competition's age bands (``DEFAULT_AGE_BOUNDS``) whatever a run trained with, so tuning and scoring see the
labels the leaderboard sees. Eval images come from ``eval/info.csv`` only, never ``eval/labels.csv``.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Sequence

import numpy as np
import pandas as pd

from .bundle import output_dir
from .data import NUM_CLASSES, DataError
from .data.dataset import build_dataset
from .infer import Run, build_views, image_table, inference_engine, inference_model, load_run, predict, tta_views
from .io import atomic_path, atomic_write_text, is_main_process, note_path
from .runs import run_home
from .tasks import get_task
from .years import AGE_COLUMN

VOTES = ("soft", "hard")  # soft: mean probability; hard: majority of each run's argmax
KEY_COLUMNS = {"eval": "ImageID", "val": "path"}
SUM_TOLERANCE = 1e-3  # rows of probabilities must sum to 1 within this (CSV rounding)


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


def predict_run(run: Run, split: str, data_dir: str | Path, tta: bool = False, device: str = "auto",
                runtime: str = "torch", skip: Collection[str] = ()) -> pd.DataFrame:
    """One run's table: key column, ``p0..`` (and ``age_years`` for a year head), and for val ``target``/``label``;
    without the images ``skip`` lists (their paths)."""
    if split == "val" and run.config.val != "fold":
        raise DataError(f"{run.run_dir}: trained on everyone (val={run.config.val}): it has no validation people")
    config = dataclasses.replace(run.config, data_dir=str(data_dir))  # crops and caches follow the data
    rows = image_table(config, split, data_dir)
    rows = rows[~rows["file"].isin(skip)] if skip else rows
    views = build_views(tta_views(config, tta))
    dataset = build_dataset(config, rows["file"], run.mean, run.std)
    model, desc = inference_model(run, runtime), f"{config.task} {split} {run.run_dir.name}"
    engine = inference_engine(config, device)
    table = rows.drop(columns="file")
    columns = predict(model, dataset, engine, views, config.batch_size, desc).columns()  # p0.., age_years
    for k, (column, values) in enumerate(columns.items()):
        table.insert(1 + k, column, values)
    return table


def predict_runs(run_dirs: Sequence[str | Path], split: str, data_dir: str | Path, tta: bool = False,
                 how: str = "soft", which: str = "best", device: str = "auto", task: str | None = None,
                 runtime: str = "torch", skip: Collection[str] = ()):
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
        tables.append(predict_run(run, split, data_dir, tta, device, runtime, skip))
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
    """``<folder>/pred_<split>[_tta][_<vote><runs>].csv``: the folder is the CV folder when the runs are folds of
    one, else the first run."""
    suffix = f"_{how}{len(run_dirs)}" if len(run_dirs) > 1 else ""
    homes = {run_home(r) for r in run_dirs}
    folder = homes.pop() if len(run_dirs) > 1 and len(homes) == 1 else Path(run_dirs[0])
    return output_dir(folder) / f"pred_{split}{'_tta' if tta else ''}{suffix}.csv"


def write_predictions(table: pd.DataFrame, path: str | Path, note: dict) -> Path:
    if not is_main_process():  # under torchrun every rank holds the same table; one writes it
        return Path(path)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    atomic_write_text(note_path(path), json.dumps(note, indent=1) + "\n")
    return Path(path)


# --- reading a table back -----------------------------------------------------------------------

@dataclass
class PredictionTable:
    """One task's probability table, keyed by ``ImageID`` (eval) or image ``path`` (val)."""

    path: Path  # where it came from, for messages
    task: str
    key_column: str  # ImageID | path
    keys: np.ndarray
    probs: np.ndarray  # (images, classes)
    label: np.ndarray | None = None  # val only: the 18-class truth
    note: dict = field(default_factory=dict)

    @property
    def split(self) -> str:
        return "eval" if self.key_column == "ImageID" else "val"

    def reindexed(self, keys: Sequence[str]) -> "PredictionTable":
        order = pd.Index(self.keys).get_indexer(keys)
        return PredictionTable(self.path, self.task, self.key_column, self.keys[order], self.probs[order],
                               None if self.label is None else self.label[order], self.note)


def predictions_from_table(table: pd.DataFrame, task: str, path: str | Path,
                           note: dict | None = None) -> PredictionTable:
    """Check a table (key column, p0..pK-1, for val ``label``) against its task; refusals name ``path``."""
    path, note = Path(path), note or {}
    if note.get("task") not in (None, task):
        raise DataError(f"{path}: holds {note['task']} predictions (see {path.with_suffix('.json').name}), not {task}")
    keys = [c for c in ("ImageID", "path") if c in table.columns]
    if len(keys) != 1:
        raise DataError(f"{path}: needs exactly one key column, ImageID (eval) or path (val); found {keys or 'none'}")
    key = keys[0]
    prob_columns = sorted((c for c in table.columns if re.fullmatch(r"p\d+", c)), key=lambda c: int(c[1:]))
    expected = get_task(task).num_classes
    if prob_columns != [f"p{k}" for k in range(len(prob_columns))] or len(prob_columns) != expected:
        raise DataError(f"{path}: class columns {','.join(prob_columns) or 'none'}; a {task} prediction has "
                        f"{expected} (p0..p{expected - 1}) - is this the right task's file?")
    if table.empty:
        raise DataError(f"{path}: no rows")
    duplicated = table[key][table[key].duplicated()]
    if len(duplicated):
        raise DataError(f"{path}: line {duplicated.index[0] + 2}: duplicated {key} {duplicated.iloc[0]}")
    probs = table[prob_columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(probs).all(axis=1) | (probs < 0).any(axis=1) | (np.abs(probs.sum(axis=1) - 1) > SUM_TOLERANCE)
    if bad.any():
        line = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: line {line + 2}: {','.join(map(str, table[prob_columns].iloc[line]))} are not "
                        f"probabilities (non-negative, summing to 1)")
    label = None
    if key == "path" and "label" in table.columns:
        label = pd.to_numeric(table["label"], errors="coerce").to_numpy()
        if not (np.isfinite(label) & (label >= 0) & (label < NUM_CLASSES) & (label % 1 == 0)).all():
            raise DataError(f"{path}: column label must hold classes 0..{NUM_CLASSES - 1}")
        label = label.astype(np.int64)
    return PredictionTable(path, task, key, table[key].astype(str).to_numpy(), probs, label, note)


def read_predictions(path: str | Path, task: str) -> PredictionTable:
    """A prediction CSV and the JSON note beside it (when there is one)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prediction file does not exist")
    try:
        table = pd.read_csv(path, dtype={"ImageID": str, "path": str}, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot be read as CSV ({str(err).splitlines()[0]})") from None
    note_file = note_path(path)
    try:
        note = json.loads(note_file.read_text()) if note_file.is_file() else {}
    except json.JSONDecodeError as err:
        raise DataError(f"{note_file}: not valid JSON ({err})") from None
    return predictions_from_table(table, task, path, note)
