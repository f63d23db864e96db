"""``maskcls submit``: each task's runs predict the eval images (prediction tables, ``predictions.py``), the three
specialists' tables are combined into the 18-class answer per image (``combine.py``, with the tuned bias when
there is one), and the submission CSV is written in ``eval/info.csv`` order. Eval face crops are cached once
before any run predicts; an eval image that does not decode fails the command or, when asked, gets a fallback
answer. A submission never reads ``eval/labels.csv``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from .bundle import is_bundled
from .config import Config
from .data import NUM_CLASSES, DataError, class_name, read_eval_images
from .engine import pick_device
from .io import check_writable
from .predictions import default_output, predict_runs, predictions_from_table, write_predictions
from .tasks import SPECIALISTS


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
    from .combine import answer_counts, submission, write_submission

    run_dirs = [r for rs in runs.values() for r in rs]
    data_dir = Path(data_dir) if data_dir else common_data_dir(run_dirs, which)
    # settle the bias before the slow part, so a bad --bias fails at once
    bias, which_bias = resolve_bias(bias_option, {task: [str(Path(r).resolve()) for r in rs] for task, rs in runs.items()})
    outputs = {task: check_writable(default_output(runs[task], "eval", tta, "soft")) for task in SPECIALISTS}
    lines, predictions = [f"data: {data_dir}", *crop_eval_once(run_configs(run_dirs, which), data_dir, device)], {}
    unreadable = unreadable_eval_images(data_dir) if on_bad_image == "fallback" else {}
    skip = {path for path, _ in unreadable.values()}
    for task in SPECIALISTS:
        table, note = predict_runs(runs[task], "eval", data_dir, tta, "soft", which, device, task=task, skip=skip)
        path = write_predictions(table, outputs[task], note)
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
    output = check_writable(default_output(runs, "eval", tta, "soft"))
    lines = crop_eval_once(run_configs(runs, which), data_dir, device)
    unreadable = unreadable_eval_images(data_dir) if on_bad_image == "fallback" else {}
    table, note = predict_runs(runs, "eval", data_dir, tta, "soft", which, device, task="joint",
                               skip={path for path, _ in unreadable.values()})
    path = write_predictions(table, output, note)
    probs = table[[f"p{k}" for k in range(NUM_CLASSES)]].to_numpy()
    frame = pd.DataFrame({"ImageID": table["ImageID"], "ans": probs.argmax(1)})
    frame, warnings = with_fallback(frame, read_eval_images(data_dir)["ImageID"].tolist(), unreadable)
    write_submission(frame, out)
    return [*lines, f"joint: {', '.join(map(str, runs))} ({which}.pt; views {'+'.join(note['views'])}) -> {path}",
            f"wrote {out}: {len(frame)} images in the order of {data_dir / 'eval' / 'info.csv'}",
            answer_counts(frame["ans"]), *warnings]
