"""What the benchmarks share: the ``maskcls`` command runner, face crops before any training, finished runs and
their epochs' seconds, the per-task budget, boxes' overlap, and run names that follow the resolved config."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable

import pandas as pd

from maskcls.config import Config, load_config
from maskcls.tasks import SPECIALISTS

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_DATA = SHARED_DATA / "faces"
BUDGET_TASKS = ("mask", "gender", "age", "joint")
# --quick: a SMOKE budget, explicit overrides on top of the configs; it checks the chain, its scores mean nothing
QUICK = {"mask": ["img_size=64", "epochs=1"], "gender": ["img_size=64", "epochs=1"], "age": ["img_size=64", "epochs=1"],
         "joint": ["img_size=64", "epochs=3"]}


def maskcls(*args: str) -> tuple[str, float]:
    """Run one maskcls command; return its stdout and wall seconds; stop on failure."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "maskcls", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"`maskcls {' '.join(args)}` failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    print(f"  {seconds:7.1f} s  maskcls {' '.join(args)}", flush=True)
    return done.stdout, seconds


def iou(a, b) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 for two empty ones."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - width * height
    return width * height / union if union > 0 else 0.0


def crop_all(data: Path, *options: str, configs: Iterable[Config] | None = None) -> float:
    """``maskcls crop`` of ``data`` with every detector that ``configs`` (default: the shipped specialists) crop
    with, so no run detects on the fly; returns the seconds. ``options``: more options (``--extra FOLDER``)."""
    configs = [load_config(task) for task in SPECIALISTS] if configs is None else configs
    detectors = dict.fromkeys(c.crop_detector for c in configs if c.crop == "faces")
    return sum(maskcls("crop", str(data), "--detector", d, *options)[1] for d in detectors)


def extra_options(configs: Iterable[Config]) -> list[str]:
    """``--extra FOLDER`` for every extra_data folder of ``configs``, for :func:`crop_all`."""
    folders = dict.fromkeys(folder for c in configs for folder in c.extra_data)
    return [option for folder in folders for option in ("--extra", folder)]


def budget(quick: bool = False) -> dict:
    """configs/' per-task image sizes and epochs and their batch size and lr (with --quick's smoke overrides),
    for the scripts that pass them on as overrides (bench/age.py, bench/cv_quality.py)."""
    configs = {task: load_config(task, QUICK[task] if quick else []) for task in BUDGET_TASKS}
    return {"img_size": {t: c.img_size for t, c in configs.items()},
            "epochs": {t: c.epochs for t, c in configs.items()},
            "batch_size": configs["mask"].batch_size, "lr": configs["mask"].lr}


def config_hash(task: str, overrides: Iterable[str] = (), config_file: Path | None = None, digits: int = 8) -> str:
    """Hex digits of the resolved config of ``task`` (its YAML, the base it extends, the overrides), where the run
    lives aside: a changed value trains a new run, an edited comment reuses the old one."""
    values = load_config(task, list(overrides), config_file=config_file).to_dict()
    for where in ("project", "name"):
        values.pop(where)
    return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:digits]


def finished_run(task: str, run: Path, epochs: int, train_args) -> float:
    """Train ``run`` (``<project>/<task>/<name>``), finish its interrupted training, or reuse it when it holds
    ``epochs`` epochs; returns its epochs' seconds, the same whether it is fresh, resumed or reused (no image
    preloading, no validation). An ensemble folder (``ensemble: N``) is reused when every member is done; else the
    same command finishes it (skipping the finished members)."""
    from maskcls.runs import is_ensemble_dir, member_dirs

    members = member_dirs(run) if is_ensemble_dir(run) else [run]
    done = [m / "results.csv" for m in members]
    if all(d.is_file() and len(pd.read_csv(d)) == epochs for d in done) and \
            len(members) == load_config(task, train_args).ensemble:
        print(f"  reuse {run}", flush=True)
    elif (run / "last.pt").is_file():
        maskcls("train", task, "--resume", str(run))
    else:
        maskcls("train", task, *train_args, f"name={run.name}")
    return epochs_seconds(run)


def epochs_seconds(run: Path) -> float:
    """The seconds of a finished run's epochs (its results.csv); of all its folds' for a CV folder."""
    from maskcls.runs import expand_runs

    return sum(float(pd.read_csv(Path(r) / "results.csv")["seconds"].sum()) for r in expand_runs([run]))
