"""A K-fold ensemble of each specialist against one fold at the same per-model budget, and the bias tuned on
out-of-fold predictions (every training person) against the bias tuned on one fold's validation people.

    python bench/cv_quality.py            # configs/' sizes and epochs per model, 5 folds (~5x their training)
    python bench/cv_quality.py --quick    # its quick budget, 3 folds
    python bench/cv_quality.py --data sample_data/faces --backbone test_efficientnet --pretrained none --crop none --quick

`maskcls cv <task> --tta` for mask, gender and age (resumable: a re-run reuses finished folds), then six
submissions scored on eval/labels.csv: fold 0 alone and the K-fold soft vote, each with no bias, the bias
tuned on fold 0's validation predictions and the bias tuned on the out-of-fold ones; then 95 % intervals
of the two differences over a bootstrap of the eval people. Train s: the epochs' seconds of the models used.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `python bench/cv_quality.py`
from bench.common import (DEFAULT_DATA, budget as recipe_budget, config_hash, crop_all, epochs_seconds,  # noqa: E402
                          maskcls)

TASKS = ("mask", "age", "gender")  # combine's order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--folds", type=int, default=None, help="default 5 (3 with --quick)")
    parser.add_argument("--project", type=Path, default=Path("runs/cv_quality"))
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--pretrained", default="efficientnet-lite0")
    parser.add_argument("--crop", default="mtcnn", choices=["none", "center", "mtcnn"])
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if not (args.data / "train").is_dir() or not (args.data / "eval" / "labels.csv").is_file():
        print(f"skip: no dataset with eval/labels.csv at {args.data}")
        return
    from maskcls.evaluate import read_answers, score
    from maskcls.metrics import bootstrap_macro_f1

    os.environ["MASKCLS_NO_PROGRESS"] = "1"
    started = time.perf_counter()
    budget = recipe_budget(args.quick)
    folds = args.folds or (3 if args.quick else 5)
    project = args.project / ("quick" if args.quick else "full")
    common = [f"data_dir={args.data}", f"lr={budget['lr']}", f"backbone={args.backbone}", f"pretrained={args.pretrained}",
              f"batch_size={budget['batch_size']}", f"crop={args.crop}", f"seed={args.seed}", f"project={project}",
              "device=cpu", "warmup_epochs=0.3", f"folds={folds}"]
    print(f"budget per model: {json.dumps(budget)}; {folds} folds; {args.backbone} ({args.pretrained}), crop "
          f"{args.crop}, seed {args.seed}, {os.cpu_count()} cores", flush=True)
    if args.crop == "mtcnn":
        crop_all(args.data)
    cvs, seconds = {}, {}
    for task in TASKS:
        size, epochs = budget["img_size"][task], budget["epochs"][task]
        items = [*common, f"img_size={size}", f"epochs={epochs}"]
        name = f"cv{folds}-{size}px-e{epochs}-s{args.seed}-{config_hash(task, items, digits=6)}"
        cvs[task] = project / task / name
        maskcls("cv", task, *items, f"name={name}", "--tta")
        seconds[task] = [epochs_seconds(cvs[task] / f"fold{k}") for k in range(folds)]

    # biases: on the out-of-fold tables, and on fold 0's own validation predictions
    bias = {"oof": project / "bias_oof.yaml", "fold 0 val": project / "bias_fold0.yaml"}
    maskcls("combine", *(str(cvs[t] / "oof.csv") for t in TASKS), "--tune", "--bias-out", str(bias["oof"]))
    fold0_val = []
    for task in TASKS:
        fold0_val.append(str(project / f"val_fold0_{task}.csv"))
        maskcls("predict", task, str(cvs[task] / "fold0"), str(args.data), "--split", "val", "--tta", "--out",
                fold0_val[-1])
    maskcls("combine", *fold0_val, "--tune", "--bias-out", str(bias["fold 0 val"]))

    labels = args.data / "eval" / "labels.csv"
    truth = read_answers(labels)
    people = pd.read_csv(labels, dtype=str).set_index("ImageID")["person"].reindex(truth.index).to_numpy()
    answers, rows = {}, []
    for models, runs, prediction in (("fold 0", {t: cvs[t] / "fold0" for t in TASKS}, "pred_eval_tta.csv"),
                                     (f"{folds}-fold ensemble", cvs, f"pred_eval_tta_soft{folds}.csv")):
        out = project / f"submission_{models.replace(' ', '_')}.csv"
        _, infer_s = maskcls("submit", *(x for t in TASKS for x in (f"--{t}", str(runs[t]))), "--tta", "--bias",
                             "none", "--out", str(out))
        tables = [str(runs[t] / prediction) for t in TASKS]  # submit writes a fold's into it, the vote into the CV folder
        train_s = sum(seconds[t][0] if models == "fold 0" else sum(seconds[t]) for t in TASKS)
        for bias_name, bias_file in (("no bias", None), *bias.items()):
            label = f"{models} + TTA" + ("" if bias_file is None else f" + bias tuned on {bias_name}")
            if bias_file is not None:
                out = project / f"submission_{models.replace(' ', '_')}_{bias_file.stem}.csv"
                maskcls("combine", *tables, "--bias", str(bias_file), "--out", str(out))
            answers[label] = read_answers(out).reindex(truth.index).to_numpy()
            s = score(truth.to_numpy(), answers[label])
            t = s["tasks"]
            rows.append(f"| {label} | {t['mask']:.4f} | {t['gender']:.4f} | {t['age']:.4f} | {s['macro_f1']:.4f} | "
                        f"{train_s:.0f} | {infer_s:.0f} |")
            print(f"  -> {rows[-1]}", flush=True)
    print("\n| design | mask F1 | gender F1 | age F1 | 18-class macro F1 | train s | infer s |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    f1 = bootstrap_macro_f1(truth.to_numpy(), answers, people, 18)
    ensemble, single = f"{folds}-fold ensemble + TTA", "fold 0 + TTA"
    pairs = [(ensemble, single), (f"{ensemble} + bias tuned on oof", f"{ensemble} + bias tuned on fold 0 val"),
             (f"{single} + bias tuned on oof", f"{single} + bias tuned on fold 0 val")]
    print(f"\n95 % intervals over 1000 resamples of the {len(set(people))} eval people:")
    for a, b in pairs:
        diff = f1[a] - f1[b]
        print(f"  {a} minus {b}: {np.mean(diff):+.3f} ({np.percentile(diff, 2.5):+.3f} .. "
              f"{np.percentile(diff, 97.5):+.3f})")
    print(f"this script's wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
