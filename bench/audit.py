"""Does `maskcls audit` find planted label errors? And do its suggested fixes help?

    python bench/audit.py                      # ../shared/data/faces; the budget below (~30 min on a 2-core CPU)
    python bench/audit.py --quick              # 64 px, one epoch, 3 folds: a smoke run
    python bench/audit.py --extra ../shared/data/extra_faces   # the gender judges also learn from 6,000 more faces
    python bench/audit.py --extra ../shared/data/extra_faces --set gender.backbone=tf_efficientnet_lite2 \
        --set gender.pretrained=auto --set gender.img_size=128   # configs/gender.yaml's backbone as the judge
    python bench/audit.py --data sample_data/faces --backbone test_efficientnet --pretrained none --crop none --quick

1. Plants known errors into a copy of the dataset under --work (hard links, else symlinks, else copies; the
   source is never written): with --seed, 3 % of the people get the other gender (folder name and train.csv),
   2 % get their incorrect_mask and normal files swapped. The MTCNN crops of the source, when cached, are
   reused through a manifest for the copy that points at them (the crops are keyed by content).
2. `maskcls cv mask` and `maskcls cv gender` (folds, budget below), then `maskcls audit` on their out-of-fold
   predictions.
3. Prints, per kind, the recall of the planted people within the top 2 x planted suspects of that kind and the
   precision there (at most 0.5 by construction), and the recall and precision of cleanlab's flagged set (what
   fixes_suggested.yaml holds), and the precision of the shortest head of the ranking that holds 80 % of the
   planted people (the target's operating point). The source data's own label errors, if any, count against
   precision.
4. Trains mask and gender on every person (val=none, same budget) with and without the suggested fixes, age
   once, submits with TTA and prints the 18-class macro F1 on eval/labels.csv of each (--oracle adds the
   fixes that exactly undo the planting).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `python bench/audit.py`
from bench.common import DEFAULT_DATA, crop_all, finished_run, maskcls  # noqa: E402

# Per-model budget on a 2-core CPU with cached crops: ~65 train images/s at 96 px, 4480 train images a fold
# (4/5 of 5600), 2 epochs -> ~140 s a fold, 5 folds x 2 tasks ~25 min plus out-of-fold prediction; the
# retraining (5600 images, 2 epochs: mask, gender twice, age once) ~12 min.
FULL = {"img_size": 96, "epochs": 2, "folds": 5, "batch_size": 32, "lr": 5e-4}
QUICK = {"img_size": 64, "epochs": 1, "folds": 3, "batch_size": 32, "lr": 5e-4}
GENDER_SHARE, SWAP_SHARE = 0.03, 0.02


def link(source: Path, target: Path) -> str:
    """Hard link, else symlink (another filesystem), else copy; returns which."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for how, make in (("hard link", os.link), ("symlink", os.symlink), ("copy", shutil.copy2)):
        try:
            make(source.resolve(), target)
            return how
        except OSError:
            continue
    raise OSError(f"cannot link or copy {source} to {target}")


def plant_errors(data: Path, out: Path, seed: int) -> dict:
    """A copy of ``data`` at ``out`` with planted errors; returns {gender: [ids], swap: [ids], renamed: {old: new}}
    (renamed: relative image paths of the source -> of the copy, for the crop manifest)."""
    train = pd.read_csv(data / "train" / "train.csv", dtype=str, keep_default_na=False)
    rng = np.random.default_rng(seed)
    people = rng.permutation(train["id"].to_numpy())
    n_gender, n_swap = round(GENDER_SHARE * len(people)), round(SWAP_SHARE * len(people))
    flipped, swapped = set(people[:n_gender]), set(people[n_gender:n_gender + n_swap])
    renamed, hows = {}, set()
    for row in train.itertuples():
        folder = data / "train" / "images" / row.path
        new_name = row.path
        if row.id in flipped:
            other = "female" if row.gender == "male" else "male"
            new_name = row.path.replace(f"_{row.gender}_", f"_{other}_", 1)
            train.loc[train["id"] == row.id, ["gender", "path"]] = [other, new_name]
        for image in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
            stem = image.stem
            if row.id in swapped and stem in ("incorrect_mask", "normal"):
                stem = "normal" if stem == "incorrect_mask" else "incorrect_mask"
            target = out / "train" / "images" / new_name / f"{stem}{image.suffix}"
            hows.add(link(image, target))
            renamed[image.relative_to(data).as_posix()] = target.relative_to(out).as_posix()
    train.to_csv(out / "train" / "train.csv", index=False)
    for image in (data / "eval").rglob("*"):
        if image.is_file():
            hows.add(link(image, out / image.relative_to(data)))
            renamed[image.relative_to(data).as_posix()] = image.relative_to(data).as_posix()
    print(f"planted: {len(flipped)} gender flips, {len(swapped)} incorrect/normal swaps among {len(people)} people "
          f"({', '.join(sorted(hows))}) -> {out}", flush=True)
    return {"gender": sorted(flipped), "swap": sorted(swapped), "renamed": renamed}


def reuse_crops(data: Path, copy: Path, renamed: dict) -> int:
    """Give the copy's crop cache the source's cached face boxes of every detector (keyed by content hash, so a
    box stays valid under its new name); returns how many entries were carried over."""
    from maskcls.data.crop import MANIFEST_COLUMNS, detections_dir, read_manifest, resolve_cache_dir
    from maskcls.data.faces import DETECTORS, CropSettings
    from maskcls.io import atomic_write_csv

    carried = 0
    for detector in DETECTORS:
        settings = CropSettings.for_detector(detector)
        entries = read_manifest(detections_dir(resolve_cache_dir(data), settings))
        rows = [{**entry, "path": renamed[key]} for key, entry in entries.items() if key in renamed]
        if rows:
            atomic_write_csv(detections_dir(resolve_cache_dir(copy), settings) / "manifest.csv",
                             pd.DataFrame(rows, columns=MANIFEST_COLUMNS))
        carried += len(rows)
    return carried


def precision_at_recall(ranked: list[str], planted: set[str], recall: float = 0.8) -> tuple[int, float]:
    """(k, precision) of the shortest head of ``ranked`` that holds ``recall`` of ``planted``; (0, 0.0) when the
    whole ranking holds less."""
    need, hits = int(np.ceil(recall * len(planted))), 0
    for k, person in enumerate(ranked, start=1):
        hits += person in planted
        if hits >= need:
            return k, hits / k
    return 0, 0.0


def audit_scores(audit_csv: Path, planted: dict) -> list[str]:
    suspects = pd.read_csv(audit_csv, dtype={"person": str})
    lines = ["| kind | planted | recall in top 2x | precision in top 2x | flagged | recall flagged | precision flagged "
             "| precision at recall 0.8 (top k) |", "|---|---|---|---|---|---|---|---|"]
    for kind, ids in (("gender", planted["gender"]), ("incorrect_normal_swap", planted["swap"])):
        rows, ids = suspects[suspects["kind"] == kind], set(ids)
        top = set(rows["person"].head(2 * len(ids)))
        flagged = set(rows.loc[rows["flagged"], "person"])
        hit, hit_flagged = len(top & ids), len(flagged & ids)
        k, precision = precision_at_recall(rows["person"].tolist(), ids)  # audit.csv is ranked by score
        lines.append(f"| {kind} | {len(ids)} | {hit / max(len(ids), 1):.2f} | {hit / max(len(top), 1):.2f} | "
                     f"{len(flagged)} | {hit_flagged / max(len(ids), 1):.2f} | {hit_flagged / max(len(flagged), 1):.2f} "
                     f"| {precision:.2f} ({k}) |")
    return lines


def oracle_fixes(planted: dict, path: Path, copy: Path) -> Path:
    """The label fixes that exactly undo the planting (the copy's genders flipped back, the swaps swapped)."""
    train = pd.read_csv(copy / "train" / "train.csv", dtype=str).set_index("id")
    lines = ["gender:", *(f'  "{pid}": {"male" if train.loc[pid, "gender"] == "female" else "female"}'
                          for pid in planted["gender"]),
             "swap_incorrect_normal:", *(f'  - "{pid}"' for pid in planted["swap"])]
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=Path("runs/audit_bench"), help="writable: the copy and runs")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="which people get errors")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--pretrained", default="efficientnet-lite0")
    parser.add_argument("--crop", default="mtcnn", choices=["none", "center", "mtcnn"])
    parser.add_argument("--oracle", action="store_true", help="also retrain with the fixes that undo the planting")
    parser.add_argument("--skip-retrain", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="TASK.KEY=VALUE",
                        help="an override for one task's folds and retraining, after the budget's (e.g. "
                        "gender.backbone=tf_efficientnet_lite2): a better judge; repeatable")
    parser.add_argument("--extra", type=Path, help="an extra_data folder (e.g. ../shared/data/extra_faces) for the "
                        "gender models: a better judge; extra rows are never validated, so out-of-fold stays so")
    args = parser.parse_args()
    if not (args.data / "train").is_dir():
        print(f"skip: no dataset at {args.data}")
        return
    os.environ["MASKCLS_NO_PROGRESS"] = "1"
    started = time.perf_counter()
    budget = QUICK if args.quick else FULL
    work = args.work / ("quick" if args.quick else "full") / f"seed{args.seed}"
    copy, project = work / "data", work / "runs"
    planted_file = work / "planted.json"
    if planted_file.is_file() and (copy / "train" / "train.csv").is_file():
        planted = json.loads(planted_file.read_text())
        print(f"reuse the planted copy {copy}")
    else:
        if copy.exists():
            shutil.rmtree(copy)
        planted = plant_errors(args.data, copy, args.seed)
        if args.crop == "mtcnn":
            print(f"crop cache: {reuse_crops(args.data, copy, planted['renamed'])} cached crops reused", flush=True)
        planted_file.write_text(json.dumps(planted))
    # --extra reaches the gender models only; their runs carry "-extra" in the name
    extra = {"mask": [], "gender": [f"extra_data={args.extra.resolve()}"] if args.extra else []}
    judge = {"mask": [], "gender": []}  # --set: one task's overrides after the budget's
    for item in args.set:
        task, _, override = item.partition(".")
        if task not in judge or "=" not in override:
            parser.error(f"--set {item}: expected mask.KEY=VALUE or gender.KEY=VALUE")
        judge[task].append(override)
    # a run's name carries its overrides' hash, so another judge trains new folds instead of reusing old ones
    judged = {task: f"-{hashlib.sha1(' '.join(judge[task]).encode()).hexdigest()[:6]}" if judge[task] else ""
              for task in judge}
    suffix = {"mask": judged["mask"], "gender": ("-extra" if args.extra else "") + judged["gender"]}
    extra = {task: extra[task] + judge[task] for task in judge}
    if args.crop == "mtcnn":
        crop_all(copy, *(["--extra", str(args.extra)] if args.extra else []))  # fills what the caches lacked
    common = [f"data_dir={copy}", f"project={project}", f"backbone={args.backbone}", f"pretrained={args.pretrained}",
              f"crop={args.crop}", f"img_size={budget['img_size']}", f"epochs={budget['epochs']}",
              f"batch_size={budget['batch_size']}", f"lr={budget['lr']}", "device=cpu", "warmup_epochs=0.3"]
    print(f"budget: {json.dumps(budget)}; {args.backbone} ({args.pretrained}), crop {args.crop}, "
          f"{os.cpu_count()} cores; overrides {judge}", flush=True)
    seconds = {}
    cv = {task: project / task / f"cv{suffix[task]}" for task in ("mask", "gender")}
    for task in ("mask", "gender"):
        _, seconds[f"cv {task}"] = maskcls("cv", task, *common, *extra[task], f"folds={budget['folds']}",
                                           f"name={cv[task].name}", "--tta")
    audit_dir = work / f"audit{suffix['gender']}"
    _, seconds["audit"] = maskcls("audit", str(copy), "--mask", str(cv["mask"]), "--gender", str(cv["gender"]),
                                  "--out", str(audit_dir))
    lines = audit_scores(audit_dir / "audit.csv", planted)
    print("\n".join(lines), flush=True)

    if not args.skip_retrain and (args.data / "eval" / "labels.csv").is_file():
        from maskcls.evaluate import read_answers, score

        fixes = {"planted labels": "none", "suggested fixes": str(audit_dir / "fixes_suggested.yaml")}
        if args.oracle:
            fixes["oracle fixes"] = str(oracle_fixes(planted, work / "oracle_fixes.yaml", copy))
        truth = read_answers(args.data / "eval" / "labels.csv")
        finished_run("age", project / "age" / "all-age", budget["epochs"], [*common, "val=none", "label_fixes=none"])
        lines += ["", "| training labels | mask F1 | gender F1 | age F1 | 18-class macro F1 |", "|---|---|---|---|---|"]
        for n, (label, fix) in enumerate(fixes.items()):
            runs = {}
            fixed = hashlib.sha1(Path(fix).read_bytes() if fix != "none" else b"").hexdigest()[:6]
            for task in ("mask", "gender"):
                runs[task] = project / task / f"all-{n}{suffix[task]}-{fixed}"  # new fixes: a new run
                finished_run(task, runs[task], budget["epochs"],
                             [*common, *extra[task], "val=none", f"label_fixes={fix}"])
            out = work / f"submission_{n}.csv"
            maskcls("submit", "--mask", str(runs["mask"]), "--gender", str(runs["gender"]), "--age",
                    str(project / "age" / "all-age"), "--tta", "--bias", "none", "--out", str(out))
            s = score(truth.to_numpy(), read_answers(out).reindex(truth.index).to_numpy())
            lines.append(f"| {label} | {s['tasks']['mask']:.4f} | {s['tasks']['gender']:.4f} | "
                         f"{s['tasks']['age']:.4f} | {s['macro_f1']:.4f} |")
            print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))
    print(f"\nwall: cv mask {seconds['cv mask']:.0f} s, cv gender {seconds['cv gender']:.0f} s, audit "
          f"{seconds['audit']:.0f} s; whole script {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
