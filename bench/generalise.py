"""How the specialists generalise: the dev eval and a set from another source, side by side. The release check.

    python bench/generalise.py                                   # the recipe in configs/, as a user gets it
    python bench/generalise.py --joint                           # and the one 18-class model of configs/joint.yaml
    python bench/generalise.py --recipe robust augment+=downscale,blur,jpeg   # a candidate: overrides on top
    python bench/generalise.py --runs mask=runs/mask/exp age=runs/age/exp gender=runs/gender/exp  # score runs
    python bench/generalise.py --runs mask=M age=A gender=G1,G2,G3  # a task's runs voted (a seed ensemble)
    python bench/generalise.py --runs ... --tuned-bias            # also each recipe with `combine --tune`'s bias
    python bench/generalise.py --rescore                         # the last invocation's submissions, scored again
    python bench/generalise.py --project runs/a --rescore runs/b  # two invocations' submissions, paired against a's first

First it fills the face-crop caches of both sets (and of every extra_data folder a recipe trains on) for every
detector the recipes crop with, so no run detects on the fly. For each recipe it trains the three specialists
with `maskcls train` (configs/<task>.yaml plus the recipe's overrides; a run is reused when its name, which
carries a hash of the resolved config, already holds a finished run), submits with TTA on `../shared/data/faces`
(dev eval) and on `../shared/data/ood_ffhq` (FFHQ faces with MaskedFace-Net masks: no `not wear` class, age and
gender are a face API's estimates), and prints one table per set: mask, gender and age-band macro F1 and the 18-class macro F1, each over the
classes that occur in that set's labels, with 95 % intervals from a bootstrap over whole people; then the
gender and mask F1 within each true age band (where a set's errors sit).
Skips cleanly when a dataset is absent.

A recipe override is `key=value` (replaces the config's value) or `key+=a,b` (appends to a list key such as
`augment`, so a candidate says only what it adds). Task-specific: `gender.key=value`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `python bench/generalise.py`
from bench.common import (SHARED_DATA, config_hash, crop_all, epochs_seconds, extra_options,  # noqa: E402
                          finished_run, maskcls)
from maskcls.config import load_config  # noqa: E402
from maskcls.data.labels import decode  # noqa: E402
from maskcls.evaluate import read_answers  # noqa: E402
from maskcls.metrics import bootstrap_macro_f1  # noqa: E402

SETS = {"dev": SHARED_DATA / "faces", "ood": SHARED_DATA / "ood_ffhq"}
TASKS = ("mask", "age", "gender")
PARTS = {"mask": 0, "gender": 1, "age": 2}  # position in labels.decode's (mask, gender, age_band)


def task_overrides(task: str, items: list[str]) -> list[str]:
    """The recipe's ``key=value`` items for ``task``: ``task.key=v`` only for that task, ``key+=a,b``
    appended to the config's list."""
    out = []
    for item in items:
        prefix, dot, rest = item.partition(".")
        if dot and prefix in TASKS and "=" in rest:
            if prefix != task:
                continue
            item = rest
        key, plus, value = item.partition("+=")
        if plus:
            current = list(getattr(load_config(task), key))
            item = f"{key}=" + ",".join([str(v) for v in current] + [v for v in value.split(",") if v])
        out.append(item)
    return out


def recipe_name(task: str, overrides: list[str]) -> str:
    """``<task>-<hash of the resolved config>``: the same recipe reuses its run, whatever the YAML's comments say."""
    return f"{task}-{config_hash(task, overrides)}"


def run_items(overrides: list[str], data: Path, seed: int) -> list[str]:
    return [f"data_dir={data}", f"seed={seed}", *overrides]


def train(task: str, overrides: list[str], project: Path, data: Path, seed: int) -> tuple[Path, float]:
    """A finished run of ``task`` with ``overrides`` (trained, resumed or reused) and its epochs' seconds."""
    items = run_items(overrides, data, seed)
    name = recipe_name(task, items)
    run = project / task / name
    return run, finished_run(task, run, load_config(task, items).epochs, [*items, f"project={project}"])


def tuned_bias(task_runs: dict[str, list[Path]], data: Path, out_dir: Path) -> Path:
    """``combine --tune`` on the runs' validation people (predicted with TTA): the bias YAML it stores."""
    out_dir.mkdir(parents=True, exist_ok=True)
    preds = [out_dir / f"val_{task}.csv" for task in TASKS]  # combine takes mask, age, gender in this order
    for task, pred in zip(TASKS, preds):
        maskcls("predict", task, *map(str, task_runs[task]), str(data), "--split", "val", "--tta", "--out", str(pred))
    bias = out_dir / "bias.yaml"
    maskcls("combine", *map(str, preds), "--tune", "--bias-out", str(bias), "--out", str(out_dir / "val_combined.csv"))
    return bias


def present_f1_draws(truth: np.ndarray, preds: dict, people, num_classes: int) -> dict[str, np.ndarray]:
    """Bootstrap draws of macro F1 over the classes present in ``truth`` (remapped to 0..k-1; a prediction
    of an absent class counts against the class it should have been)."""
    present = np.unique(truth)
    index = {c: i for i, c in enumerate(present)}
    other = len(present)  # every absent class becomes one extra column that never counts in the mean
    remap = lambda a: np.array([index.get(int(v), other) for v in a])  # noqa: E731
    draws = bootstrap_macro_f1(remap(truth), {k: remap(v) for k, v in preds.items()}, people, other + 1)
    # _fast_macro_f1 averages over other + 1 columns; the extra one scores 0 (it has no true member)
    return {k: v * (other + 1) / other for k, v in draws.items()}


def f1_cell(truth: np.ndarray, preds: dict[str, np.ndarray], people, num_classes: int = 3) -> dict[str, tuple]:
    """Per prediction set: (macro F1 over the classes present in ``truth``, its 95 % interval, the draws)."""
    draws = present_f1_draws(truth, preds, people, num_classes)
    present = np.unique(truth)
    return {name: (f1_score(truth, pred, labels=present, average="macro", zero_division=0),
                   *np.percentile(draws[name], [2.5, 97.5]), draws[name]) for name, pred in preds.items()}


def score_set(name: str, labels: Path, submissions: dict[str, Path]) -> list[str]:
    """Markdown rows (one per recipe) of per-task and 18-class macro F1 over present classes, with intervals."""
    table = pd.read_csv(labels, dtype={"person": str}).set_index("ImageID")
    truth = read_answers(labels)
    people = table["person"].reindex(truth.index).to_numpy()
    answers = {recipe: read_answers(path).reindex(truth.index).to_numpy() for recipe, path in submissions.items()}
    t = truth.to_numpy()
    cells = {"18-class": f1_cell(t, answers, people, 18)}
    for task, part in PARTS.items():
        cells[task] = f1_cell(decode(t)[part], {r: decode(a)[part] for r, a in answers.items()}, people)
    rows = []
    for recipe in submissions:
        row = [cells[col][recipe] for col in ("mask", "gender", "age", "18-class")]
        rows.append(f"| {name} | {recipe} | " + " | ".join(f"{c[0]:.3f} ({c[1]:.3f}-{c[2]:.3f})" for c in row) + " |")
    if len(submissions) > 1:
        first, *others = list(submissions)
        for other in others:
            diff = cells["18-class"][other][3] - cells["18-class"][first][3]
            rows.append(f"|  | {other} minus {first} (18-class) | | | | {np.mean(diff):+.3f} "
                        f"({np.percentile(diff, 2.5):+.3f} .. {np.percentile(diff, 97.5):+.3f}) |")
    return rows


def by_age_band(name: str, labels: Path, submissions: dict[str, Path]) -> list[str]:
    """Markdown rows: gender and mask macro F1 (present classes) within each true age band, per recipe."""
    truth = read_answers(labels)
    t = decode(truth.to_numpy())
    rows = []
    for recipe, path in submissions.items():
        p = decode(read_answers(path).reindex(truth.index).to_numpy())
        cells = []
        for band in range(3):
            inside = t[PARTS["age"]] == band
            for task in ("gender", "mask"):
                tt, pp = t[PARTS[task]][inside], p[PARTS[task]][inside]
                f1 = f1_score(tt, pp, labels=np.unique(tt), average="macro", zero_division=0) if inside.any() else np.nan
                cells.append(f"{f1:.3f}")
            cells.append(str(int(inside.sum())))
        rows.append(f"| {name} | {recipe} | " + " | ".join(cells) + " |")
    return rows


def print_tables(submissions: dict[str, dict[str, Path]]) -> None:
    print("\n| set | recipe | mask F1 | gender F1 | age-band F1 | 18-class F1 (present classes) |")
    print("|---|---|---|---|---|---|")
    for set_name, data in SETS.items():
        print("\n".join(score_set(set_name, data / "eval" / "labels.csv", submissions[set_name])))
    print("\nF1: macro over the classes present in the set's labels (ood_ffhq has no `not wear`: mask over 2 "
          "classes, 18-class over 12); brackets: 95 % interval over 1000 resamples of whole people.")
    print("\nWithin each true age band (<30 / 30-59 / >=60 by the set's own ages):")
    print("\n| set | recipe | gender <30 | mask <30 | images | gender 30-59 | mask 30-59 | images | gender old | "
          "mask old | images |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for set_name, data in SETS.items():
        print("\n".join(by_age_band(set_name, data / "eval" / "labels.csv", submissions[set_name])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", nargs="+", action="append", metavar="NAME [key=value ...]", default=[],
                        help="a candidate: a name and overrides on top of configs/ (repeatable)")
    parser.add_argument("--runs", nargs=3, action="append", metavar="task=RUN", default=[],
                        help="score finished runs instead of training (repeatable); task=A,B votes that task's runs")
    parser.add_argument("--no-baseline", action="store_true", help="skip the configs/ recipe itself")
    parser.add_argument("--joint", action="store_true",
                        help="also train configs/joint.yaml, one 18-class model compute-matched to the specialists")
    parser.add_argument("--rescore", nargs="*", type=Path, default=None, metavar="PROJECT",
                        help="score the submissions of the last invocation (its generalise.json) again, with those of "
                             "other invocations' project folders after them, paired; no training")
    parser.add_argument("--tuned-bias", action="store_true",
                        help="also score each recipe with the bias `combine --tune` fits on its runs' validation people")
    parser.add_argument("--project", type=Path, default=Path("runs/generalise"))
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    missing = [f"{name}: {path}" for name, path in SETS.items() if not (path / "eval" / "labels.csv").is_file()]
    if missing or not (SETS["dev"] / "train").is_dir():
        print(f"skip: dataset absent ({'; '.join(missing) or SETS['dev'] / 'train'})")
        return
    if args.rescore is not None:
        submissions = {name: {} for name in SETS}
        for project in [args.project, *args.rescore]:
            saved = json.loads((project / "generalise.json").read_text())
            for set_name, rows in saved["submissions"].items():
                submissions[set_name].update({row: Path(path) for row, path in rows.items()})
        print_tables(submissions)
        return
    os.environ["MASKCLS_NO_PROGRESS"] = "1"
    started = time.perf_counter()
    recipes = ([] if args.no_baseline else [["configs"]]) + args.recipe
    overrides = {recipe[0]: {task: task_overrides(task, recipe[1:]) for task in TASKS} for recipe in recipes}
    configs = [load_config(task, run_items(items, SETS["dev"], args.seed))
               for task_items in overrides.values() for task, items in task_items.items()]
    configs += [load_config("joint")] if args.joint else []
    for name, path in SETS.items():  # once per set and detector, before any run; a second invocation reuses them
        crop_all(path, *(extra_options(configs) if name == "dev" else []), configs=configs or None)
    runs, train_s = {}, {}
    for recipe in recipes:
        name, items = recipe[0], recipe[1:]
        print(f"recipe {name}: {' '.join(items) or '(configs/ as they are)'}", flush=True)
        trained = {task: train(task, overrides[name][task], args.project, SETS["dev"], args.seed) for task in TASKS}
        runs[name] = {task: [run] for task, (run, _) in trained.items()}
        train_s[name] = sum(seconds for _, seconds in trained.values())
    for triple in args.runs:
        given = dict(item.split("=", 1) for item in triple)
        members = {task: [Path(r) for r in given[task].split(",")] for task in TASKS}  # a,b: an ensemble
        name = "runs:" + "+".join(",".join(r.name for r in members[task]) for task in TASKS)
        runs[name] = members
        train_s[name] = sum(epochs_seconds(run) for task_members in members.values() for run in task_members)
    if args.joint:
        run, train_s["joint 18-class"] = train("joint", [], args.project, SETS["dev"], args.seed)
        runs["joint 18-class"] = {"joint": [run]}
    submissions = {name: {} for name in SETS}
    infer_s = {}
    for recipe, task_runs in runs.items():
        slug = recipe.replace(":", "_")
        biases = {recipe: "none"}
        if args.tuned_bias and "joint" not in task_runs:  # tuned on the dev set's validation people, used on both
            biases[f"{recipe} + bias"] = str(tuned_bias(task_runs, SETS["dev"], args.project / f"bias_{slug}"))
            train_s[f"{recipe} + bias"] = train_s[recipe]
        for set_name, data in SETS.items():
            options = [opt for task, members in task_runs.items() for run in members for opt in (f"--{task}", str(run))]
            for row, bias in biases.items():
                out = args.project / f"submission_{set_name}_{slug}{'_bias' if bias != 'none' else ''}.csv"
                _, infer_s[row, set_name] = maskcls("submit", *options, "--tta", "--bias", bias,
                                                    "--data-dir", str(data), "--out", str(out))
                submissions[set_name][row] = out
    print_tables(submissions)
    for recipe in submissions["dev"]:
        line = f"{recipe}: train {train_s.get(recipe, float('nan')):.0f} s (epochs' seconds)"
        print(line + "".join(f", {s} submit --tta {infer_s[recipe, s]:.0f} s" for s in SETS))
    print(f"wall time {time.perf_counter() - started:.0f} s")
    (args.project / "generalise.json").write_text(json.dumps(
        {"recipes": {r[0]: r[1:] for r in recipes}, "runs": {r: {t: ",".join(map(str, p)) for t, p in v.items()} for r, v in runs.items()},
         "submissions": {s: {r: str(p) for r, p in v.items()} for s, v in submissions.items()}}, indent=1))


if __name__ == "__main__":
    main()
