"""The specialists against one 18-class model, on real faces, under one fixed budget.

    python bench/quality.py                   # configs/*.yaml as shipped: ~45-54 min on a 2-core CPU, crops cached
    python bench/quality.py --set crop=none   # the same with one key changed in every run (printed, in the run names)
    python bench/quality.py --quick           # a smoke budget: ~12 min (64 px, one epoch a specialist), no verdict

Trains mask, gender and age specialists and the joint 18-class model with the recipes in configs/ (the
joint model's is compute-matched to the specialists', see configs/joint.yaml) and one seed, submits with and without TTA (and with tuned biases), scores every submission
against eval/labels.csv and prints one markdown table, then 95 % intervals of the 18-class F1 and of the
specialists' lead from a bootstrap over the eval people. Every step is a `maskcls` command, so the
table is what a user running those commands gets. Skips cleanly when the dataset is absent.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from maskcls.config import CONFIG_DIR, load_config
from maskcls.evaluate import read_answers, score
from maskcls.metrics import bootstrap_macro_f1

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"
TASKS = ("mask", "gender", "age", "joint")
# The full budget is configs/<task>.yaml itself: about 50 minutes of training on a 2-core CPU (~65 train
# images/s at 96 px, 5600 train images an epoch) plus inference, with the crops cached.
# --quick: a SMOKE budget, explicit overrides on top of the configs; it checks the chain, its scores mean nothing
QUICK = {"mask": ["img_size=64", "epochs=1"], "gender": ["img_size=64", "epochs=1"], "age": ["img_size=64", "epochs=1"],
         "joint": ["img_size=64", "epochs=3"]}
RECIPE_KEYS = ("backbone", "pretrained", "crop", "img_size", "epochs", "batch_size", "lr", "warmup_epochs", "loss")


def maskcls(*args: str) -> tuple[str, float]:
    """Run one maskcls command; return its stdout and wall seconds; stop on failure."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "maskcls", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"`maskcls {' '.join(args)}` failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    print(f"  {seconds:7.1f} s  maskcls {' '.join(args)}", flush=True)
    return done.stdout, seconds


def crop_all(data: Path, *extra: str) -> float:
    """``maskcls crop`` of ``data`` with every detector that configs/ name (MTCNN, RetinaFace for the mask), so
    no run detects on the fly; returns the seconds. ``extra``: more options (``--extra FOLDER``)."""
    detectors = dict.fromkeys(load_config(task).crop_detector for task in ("mask", "gender", "age"))
    return sum(maskcls("crop", str(data), "--detector", d, *extra)[1] for d in detectors)


def budget(quick: bool = False) -> dict:
    """configs/' per-task image sizes and epochs and their batch size and lr (with --quick's smoke overrides),
    for the scripts that pass them on as overrides (bench/age.py, bench/cv_quality.py)."""
    configs = {task: load_config(task, QUICK[task] if quick else []) for task in TASKS}
    return {"img_size": {t: c.img_size for t, c in configs.items()}, "epochs": {t: c.epochs for t, c in configs.items()},
            "batch_size": configs["mask"].batch_size, "lr": configs["mask"].lr}


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


def recipe_hash(task: str, varied: list[str] = ()) -> str:
    """Six hex digits of ``configs/<task>.yaml`` and the ``--set`` overrides: an edited recipe trains a new run,
    never reuses the old one."""
    text = (CONFIG_DIR / f"{task}.yaml").read_bytes() + "\n".join(varied).encode()
    return hashlib.sha1(text).hexdigest()[:6]


def noise_lines(truth, answers: dict, people, draws: int = 1000) -> str:
    """95 % intervals of each row's 18-class macro F1 and of the specialists' lead over the joint model, from
    a bootstrap over the eval people (the same resamples for every row, so the differences are paired)."""
    f1 = bootstrap_macro_f1(truth, answers, people, 18, draws=draws)
    interval = lambda x, sign="": f"{np.percentile(x, 2.5):{sign}.3f} .. {np.percentile(x, 97.5):{sign}.3f}"  # noqa: E731
    lines = [f"\n18-class macro F1, 95 % interval over {draws} resamples of the {len(set(people))} eval people:"]
    lines += [f"  {label}: {interval(draws_)}" for label, draws_ in f1.items()]
    pairs = [("specialists", "joint 18-class"), ("specialists + TTA", "joint 18-class + TTA"),
             ("specialists + TTA + tuned bias", "joint 18-class + TTA")]
    lines += [f"  {a} minus {b}: {np.mean(f1[a] - f1[b]):+.3f}, interval {interval(f1[a] - f1[b], '+')}"
              for a, b in pairs if a in f1 and b in f1]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--quick", action="store_true", help="a smoke budget of a few minutes (64 px, 1 epoch)")
    parser.add_argument("--project", type=Path, default=Path("runs/quality"))
    parser.add_argument("--set", dest="varied", action="append", default=[], metavar="KEY=VALUE",
                        help="change one config key in every run, e.g. --set crop=none (repeatable)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-joint", action="store_true")
    args = parser.parse_args()
    if not (args.data / "train").is_dir() or not (args.data / "eval" / "labels.csv").is_file():
        print(f"skip: no dataset with eval/labels.csv at {args.data}")
        return
    os.environ["MASKCLS_NO_PROGRESS"] = "1"
    started = time.perf_counter()
    project = args.project / ("quick" if args.quick else "full")
    common = [f"data_dir={args.data}", f"seed={args.seed}", f"project={project}", "device=cpu"]
    overrides = {task: [*common, *(QUICK[task] if args.quick else []), *args.varied] for task in TASKS}
    configs = {task: load_config(task, overrides[task]) for task in TASKS}
    recipes = {task: {key: getattr(configs[task], key) for key in RECIPE_KEYS} for task in TASKS}
    print(f"{'SMOKE budget (--quick, 64 px): not a verdict' if args.quick else 'budget: configs/<task>.yaml'}; "
          f"varied: {' '.join(args.varied) or 'nothing'}; seed {args.seed}, data {args.data}, {os.cpu_count()} cores",
          flush=True)
    for task in TASKS:
        print(f"  {task}: " + ", ".join(f"{k} {v}" for k, v in recipes[task].items()), flush=True)

    seconds = {}
    if any(config.crop == "mtcnn" for config in configs.values()):
        seconds["crop"] = crop_all(args.data)
    runs = {}

    def train(task: str) -> None:
        """Train (or finish an interrupted run of) ``task``; a finished run is reused with its recorded time."""
        size, epochs = configs[task].img_size, configs[task].epochs
        # a new budget, recipe or --set: a new run
        name = f"{task}-{size}px-e{epochs}-s{args.seed}-{recipe_hash(task, args.varied)}"
        runs[task] = run = project / task / name
        seconds[task] = finished_run(task, run, epochs, overrides[task])

    for task in ("mask", "gender", "age"):
        train(task)

    labels = args.data / "eval" / "labels.csv"
    truth = read_answers(labels)
    people = pd.read_csv(labels, dtype=str).set_index("ImageID")["person"].reindex(truth.index).to_numpy()
    answers = {}  # row label -> the submission's classes in truth's order, for the bootstrap
    specialists = ["--mask", str(runs["mask"]), "--age", str(runs["age"]), "--gender", str(runs["gender"])]
    val = {}
    for task in ("mask", "age", "gender"):
        val[task] = project / f"val_{task}.csv"
        maskcls("predict", task, str(runs[task]), str(args.data), "--split", "val", "--out", str(val[task]))
    bias = project / "bias.yaml"
    maskcls("combine", str(val["mask"]), str(val["age"]), str(val["gender"]), "--tune", "--bias-out", str(bias))

    rows, results = [], []

    def add_row(label: str, out: Path, train_s: float, infer_s: float) -> None:
        """Score one submission against labels.csv; print its table row at once (partial runs stay useful)."""
        answers[label] = read_answers(out).reindex(truth.index).to_numpy()
        s = score(truth.to_numpy(), answers[label])
        t = s["tasks"]
        rows.append(f"| {label} | {t['mask']:.4f} | {t['gender']:.4f} | {t['age']:.4f} | {s['macro_f1']:.4f} | "
                    f"{s['accuracy']:.4f} | {train_s:.0f} | {infer_s:.0f} |")
        print(f"  -> {rows[-1]}", flush=True)
        results.append({"design": label, **t, "macro_f1": s["macro_f1"], "accuracy": s["accuracy"],
                        "train_s": train_s, "infer_s": infer_s, "submission": str(out)})

    train_s = sum(seconds[t] for t in ("mask", "gender", "age"))
    for label, tta in [("specialists", []), ("specialists + TTA", ["--tta"])]:
        out = project / f"submission_{label.replace(' + ', '_').replace(' ', '_')}.csv"
        _, infer_s = maskcls("submit", *specialists, *tta, "--bias", "none", "--out", str(out))
        add_row(label, out, train_s, infer_s)
        infer_tta_s = infer_s
    # the tuned bias on the TTA predictions submit just wrote into the run folders: no second inference
    out = project / "submission_specialists_TTA_tuned_bias.csv"
    tta_preds = [str(runs[task] / "pred_eval_tta.csv") for task in ("mask", "age", "gender")]
    _, combine_s = maskcls("combine", *tta_preds, "--bias", str(bias), "--out", str(out))
    add_row("specialists + TTA + tuned bias", out, train_s, infer_tta_s + combine_s)
    if not args.skip_joint:
        train("joint")
        for label, tta in [("joint 18-class", []), ("joint 18-class + TTA", ["--tta"])]:
            out = project / f"submission_{label.replace(' + ', '_').replace(' ', '_')}.csv"
            _, infer_s = maskcls("submit", "--joint", str(runs["joint"]), *tta, "--out", str(out))
            add_row(label, out, seconds["joint"], infer_s)

    print("\n| design | mask F1 | gender F1 | age F1 | 18-class macro F1 | accuracy | train s | infer s |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(noise_lines(truth.to_numpy(), answers, people))
    if "crop" in seconds:
        print(f"\nface crops (cached after the first run): {seconds['crop']:.0f} s")
    print(f"train s: the epochs' training seconds (no preloading, no validation); this script's wall time: "
          f"{time.perf_counter() - started:.0f} s")
    (project / "quality.json").write_text(json.dumps({"recipes": recipes, "varied": args.varied, "args": {k: str(v) for k, v in vars(args).items()},
                                                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
