"""Predictions and submissions: eval images (or a run's own validation people) through one or several runs of a task, with
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
from pathlib import Path
from typing import Collection, Sequence

import numpy as np
import pandas as pd

from .bundle import is_bundled, newest_run, output_dir  # noqa: F401  newest_run: named from here by tests and scripts
from .config import Config
from .data import NUM_CLASSES, DataError, class_name, read_eval_images
from .data.dataset import build_dataset
from .engine import pick_device
from .infer import (Run, build_views, image_table, inference_engine, inference_model, load_run,
                    predict_probs, predict_probs_and_age, tta_views)
from .io import atomic_path, atomic_write_text, is_main_process, note_path
from .runs import run_home
from .tasks import SPECIALISTS
from .years import AGE_COLUMN, reports_age

VOTES = ("soft", "hard")  # soft: mean probability; hard: majority of each run's argmax
KEY_COLUMNS = {"eval": "ImageID", "val": "path"}


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
    """One run's table: key column, ``p0..``, and for val ``target``/``label``; without the images ``skip`` lists
    (their paths)."""
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
    if reports_age(model):  # age_target=years: the expected age in years too, from the same pass
        probs, ages = predict_probs_and_age(model, dataset, engine, views, config.batch_size, desc)
        table.insert(1, AGE_COLUMN, ages)
    else:
        probs = predict_probs(model, dataset, engine, views, config.batch_size, desc=desc)
    for k in range(probs.shape[1]):
        table.insert(1 + k, f"p{k}", probs[:, k])
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


# --- the submit command -----------------------------------------------------------------------------

def run_configs(run_dirs: Sequence[str | Path], which: str = "best") -> list[Config]:
    """The config each run (folder or .pt file) was trained with, read from its checkpoint."""
    from .checkpoint import checkpoint_config, load_checkpoint

    return [checkpoint_config(load_checkpoint(Path(r) / f"{which}.pt" if Path(r).is_dir() else Path(r)))
            for r in run_dirs]


def common_data_dir(run_dirs: Sequence[str | Path], which: str = "best") -> Path:
    """The data folder every run was trained on; refuses runs that disagree (pass --data-dir then)."""
    bundled = [run_dir for run_dir in run_dirs if is_bundled(run_dir)]
    if bundled:
        raise DataError(f"{bundled[0]}: a bundled run was not trained on a data folder of yours; pass --data-dir DATA")
    found = {}
    for run_dir, config in zip(run_dirs, run_configs(run_dirs, which)):
        found.setdefault(Path(config.data_dir).resolve(), run_dir)
    if len(found) > 1:
        (a, run_a), (b, run_b) = list(found.items())[:2]
        raise DataError(f"{run_b}: trained on {b}, {run_a} on {a}; pass --data-dir")
    return next(iter(found))


def crop_eval_once(configs: Sequence[Config], data_dir: Path, device: str = "auto") -> list[str]:
    """The eval images' face crops into the crop cache (``maskcls crop``'s) before any run predicts, once
    per crop setting among ``configs``: every task's image loader then reads them, where each would otherwise
    detect every face again. Returns the lines to print."""
    from .data.crop import CropSettings, run_crop

    lines, done = [], set()
    for config in configs:
        settings = CropSettings.from_config(config)
        if config.crop != "faces" or (settings, config.crop_cache) in done:
            continue
        done.add((settings, config.crop_cache))
        summary = run_crop(data_dir, settings, cache_dir=config.crop_cache or None, device=pick_device(device),
                           sheet=False, splits=("eval",))
        lines.append(f"crops: {summary.cropped_now} eval image(s) cropped now, "
                     f"{summary.images.get('eval', 0) - summary.cropped_now} from the cache {summary.cache_dir}")
    return lines


def unreadable_eval_images(data_dir: Path) -> dict[str, tuple[str, str]]:
    """ImageID -> (path, why) for each eval image that does not decode (each decoded once, in threads)."""
    from .data.layout import decode_problems
    from .progress import progress

    images = read_eval_images(data_dir)
    problems = {str(p.path): str(p) for p in decode_problems(
        images["path"], progress=lambda xs, total: progress(xs, total=total, desc="decode eval"))}
    return {image_id: (path, problems[path]) for image_id, path in zip(images["ImageID"], images["path"])
            if path in problems}


def with_fallback(frame: pd.DataFrame, ids: Sequence[str],
                  unreadable: dict[str, tuple[str, str]]) -> tuple[pd.DataFrame, list[str]]:
    """``frame`` (ImageID, ans) completed to every ImageID of ``ids``, in order: each unreadable one gets the most
    frequent answer of the others (the lower class on a tie). Also the warning lines that name them."""
    if not unreadable:
        return frame, []
    if frame.empty:
        raise DataError(f"no eval image decodes; the first: {next(iter(unreadable.values()))[1]}")
    fallback = int(frame["ans"].value_counts().sort_index().idxmax())
    answers = frame.set_index("ImageID")["ans"].reindex(list(ids)).fillna(fallback).astype(int)
    lines = [f"warning: {why}" for _, why in unreadable.values()]
    lines.append(f"warning: {len(unreadable)} eval image(s) unreadable, each answered {fallback} "
                 f"({class_name(fallback)}), the most frequent answer of the others: {', '.join(unreadable)}")
    return pd.DataFrame({"ImageID": list(ids), "ans": answers.to_numpy()}), lines


def make_submission(runs: dict[str, list[Path]], out: Path, data_dir: Path | None = None, tta: bool = False,
                    bias_option: str | None = None, which: str = "best", device: str = "auto",
                    on_bad_image: str = "fail") -> list[str]:
    """``maskcls submit``: predict eval with each task's runs (probability CSVs into the run folders),
    combine with the tuned bias when there is one, write ``out`` atomically. Returns the lines to print
    (``warning:`` lines name unreadable images answered by ``on_bad_image=fallback``)."""
    from .bias import resolve_bias
    from .combine import answer_counts, predictions_from_table, submission, write_submission

    run_dirs = [r for rs in runs.values() for r in rs]
    data_dir = Path(data_dir) if data_dir else common_data_dir(run_dirs, which)
    # settle the bias before the slow part, so a bad --bias fails at once
    bias, which_bias = resolve_bias(bias_option, {task: [str(Path(r).resolve()) for r in rs] for task, rs in runs.items()})
    lines, predictions = [f"data: {data_dir}", *crop_eval_once(run_configs(run_dirs, which), data_dir, device)], {}
    unreadable = unreadable_eval_images(data_dir) if on_bad_image == "fallback" else {}
    skip = {path for path, _ in unreadable.values()}
    for task in SPECIALISTS:
        table, note = predict_runs(runs[task], "eval", data_dir, tta, "soft", which, device, task=task, skip=skip)
        path = write_predictions(table, default_output(runs[task], "eval", tta, "soft"), note)
        predictions[task] = predictions_from_table(table, task, path, note)
        used = ", ".join(map(str, runs[task]))
        lines.append(f"{task}: {used} ({which}.pt; views {'+'.join(note['views'])}) -> {path}")
    ids = read_eval_images(data_dir)["ImageID"].tolist()
    readable = [i for i in ids if i not in unreadable]
    frame = submission(predictions, readable, data_dir / "eval" / "info.csv", None if bias is None else bias.values)
    frame, warnings = with_fallback(frame, ids, unreadable)
    write_submission(frame, out)
    return lines + [which_bias, f"wrote {out}: {len(frame)} images in the order of {data_dir / 'eval' / 'info.csv'}",
                    answer_counts(frame["ans"]), *warnings]


def make_joint_submission(runs: list[Path], out: Path, data_dir: Path | None = None, tta: bool = False,
                          which: str = "best", device: str = "auto", on_bad_image: str = "fail") -> list[str]:
    """The single 18-class model's submission: the argmax of its (voted) probabilities, in info.csv order."""
    from .combine import answer_counts, write_submission

    data_dir = Path(data_dir) if data_dir else common_data_dir(runs, which)
    lines = crop_eval_once(run_configs(runs, which), data_dir, device)
    unreadable = unreadable_eval_images(data_dir) if on_bad_image == "fallback" else {}
    table, note = predict_runs(runs, "eval", data_dir, tta, "soft", which, device, task="joint",
                               skip={path for path, _ in unreadable.values()})
    path = write_predictions(table, default_output(runs, "eval", tta, "soft"), note)
    probs = table[[f"p{k}" for k in range(NUM_CLASSES)]].to_numpy()
    frame = pd.DataFrame({"ImageID": table["ImageID"], "ans": probs.argmax(1)})
    frame, warnings = with_fallback(frame, read_eval_images(data_dir)["ImageID"].tolist(), unreadable)
    write_submission(frame, out)
    return [*lines, f"joint: {', '.join(map(str, runs))} ({which}.pt; views {'+'.join(note['views'])}) -> {path}",
            f"wrote {out}: {len(frame)} images in the order of {data_dir / 'eval' / 'info.csv'}",
            answer_counts(frame["ans"]), *warnings]
