"""The age head and extra faces: band vs years target, 0 / 2,000 / 6,000 extra faces, on the dev eval.

    python bench/age.py                 # the full budget (configs/' sizes and epochs), crops cached first
    python bench/age.py --quick         # a few minutes a row
    python bench/age.py --rows band:0,years:0,years:6000 --sigma 2

Each row trains an age specialist (``age_target`` band or years, with N extra faces) and, when N > 0, a
gender specialist on the same extra faces (they carry a gender); the mask specialist is shared by every
row. Each row then submits with TTA and prints: age MAE (years rows: the expected age of the age run's
TTA predictions against eval/labels.csv's ``age``), age-band F1, gender F1 and the 18-class macro F1, then
95 % intervals from a bootstrap over the eval people (maskcls.metrics.bootstrap_macro_f1, paired: every
row on the same resamples) of each row's 18-class and age-band F1 and of its difference to the first row.

Same training budget per row: extra faces lengthen an epoch, so a row with N extra faces trains
``round(epochs * main / (main + N))`` epochs (at least 1), ``main`` the main training images of the fold:
the images seen stay about equal. The table's train seconds say what each row cost. Years rows sum the
year distribution into the bands of ``--years-age-bounds`` (default the competition's 30,60: a year head
needs no shifted band edge), band rows ``--band-age-bounds`` (30,59: the band head's recipe until configs/age.yaml
took the year head). Every step is a ``maskcls`` command.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `python bench/age.py`
from bench.common import budget as recipe_budget, config_hash, crop_all, finished_run, maskcls  # noqa: E402

from maskcls.data import load_train, split_images  # noqa: E402
from maskcls.data.labels import decode  # noqa: E402
from maskcls.evaluate import read_answers, score  # noqa: E402
from maskcls.metrics import bootstrap_macro_f1  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_ROWS = "band:0,years:0,years:2000,years:6000"


def parse_rows(text: str) -> list[tuple[str, int]]:
    """``band:0,years:2000`` -> [("band", 0), ("years", 2000)]."""
    rows = []
    for item in text.split(","):
        target, _, count = item.strip().partition(":")
        if target not in ("band", "years") or not count.isdigit():
            sys.exit(f"--rows {item!r}: expected band:N or years:N")
        rows.append((target, int(count)))
    return rows


def interval(draws: np.ndarray, sign: str = "") -> str:
    return f"{np.percentile(draws, 2.5):{sign}.3f} .. {np.percentile(draws, 97.5):{sign}.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "faces")
    parser.add_argument("--extra", type=Path, default=SHARED / "extra_faces", help="extra_data folder")
    parser.add_argument("--rows", default=DEFAULT_ROWS, help="target:extra faces, comma-separated")
    parser.add_argument("--sigma", type=float, default=2.0, help="age_sigma of the years rows (DLDL's Gaussian)")
    parser.add_argument("--years-age-bounds", default="30,60", help="age_bounds of the years rows")
    parser.add_argument("--band-age-bounds", default="30,59", help="age_bounds of the band rows (the winners' edge)")
    parser.add_argument("--quick", action="store_true", help="a smoke budget (bench/common.py's QUICK)")
    parser.add_argument("--project", type=Path, default=Path("runs/age_bench"))
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--pretrained", default="efficientnet-lite0")
    parser.add_argument("--crop", default="mtcnn", choices=["none", "center", "mtcnn"])
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    rows = parse_rows(args.rows)
    labels_csv = args.data / "eval" / "labels.csv"
    if not (args.data / "train").is_dir() or not labels_csv.is_file():
        print(f"skip: no dataset with eval/labels.csv at {args.data}")
        return
    if any(count for _, count in rows) and not (args.extra / "labels.csv").is_file():
        print(f"skip: no extra_data folder at {args.extra}")
        return
    os.environ["MASKCLS_NO_PROGRESS"] = "1"
    started = time.perf_counter()
    budget = recipe_budget(args.quick)
    project = args.project / ("quick" if args.quick else "full")
    common = [f"data_dir={args.data}", f"lr={budget['lr']}", f"backbone={args.backbone}",
              f"pretrained={args.pretrained}", f"batch_size={budget['batch_size']}", f"crop={args.crop}",
              f"seed={args.seed}", f"project={project}", "device=cpu", "warmup_epochs=0.3"]
    main_images = len(split_images(load_train(args.data), 5, 0, args.seed)[0])  # the default fold's training images
    print(f"rows {args.rows}; budget {json.dumps(budget)}; sigma {args.sigma}; years bounds {args.years_age_bounds}; "
          f"{main_images} main training images; {os.cpu_count()} cores", flush=True)
    if args.crop == "mtcnn":
        crop_all(args.data, *(["--extra", str(args.extra)] if any(c for _, c in rows) else []))

    seconds: dict[Path, float] = {}

    def train(task: str, extra_faces: int = 0, target: str = "band") -> Path:
        """Train (or reuse) one run; its name says everything that makes it differ."""
        size, epochs = budget["img_size"][task], budget["epochs"][task]
        epochs = max(1, round(epochs * main_images / (main_images + extra_faces)))  # the same images seen
        extra = [f"extra_data={args.extra}", f"extra_limit={extra_faces}"] if extra_faces else []
        head = {"years": ["age_target=years", f"age_sigma={args.sigma}", f"age_bounds={args.years_age_bounds}"],
                "band": ["age_target=band", "age_sigma=0", f"age_bounds={args.band_age_bounds}"]}[target] \
            if task == "age" else []  # every row says its head: configs/age.yaml ships the year head
        items = [*common, *extra, *head, f"img_size={size}", f"epochs={epochs}"]
        name = (f"{task}-{target}-x{extra_faces}-{size}px-e{epochs}-s{args.seed}"
                f"{f'-sd{args.sigma:g}' if target == 'years' else ''}-{config_hash(task, items, digits=6)}")
        run = project / task / name
        seconds[run] = finished_run(task, run, epochs, items)
        return run

    truth_table = pd.read_csv(labels_csv, dtype={"person": str})
    truth = read_answers(labels_csv)
    order = truth_table.set_index("ImageID").reindex(truth.index)
    people, true_age = order["person"].to_numpy(), order["age"].to_numpy(dtype=float)
    mask_run = train("mask")
    table, answers = [], {}
    for target, extra_faces in rows:
        label = f"{target}, {extra_faces} extra"
        age_run, gender_run = train("age", extra_faces, target), train("gender", extra_faces)
        out = project / f"submission_{target}_x{extra_faces}.csv"
        _, infer_s = maskcls("submit", "--mask", str(mask_run), "--age", str(age_run), "--gender", str(gender_run),
                             "--tta", "--bias", "none", "--out", str(out))
        answers[label] = read_answers(out).reindex(truth.index).to_numpy()
        scores = score(truth.to_numpy(), answers[label])
        ages = pd.read_csv(age_run / "pred_eval_tta.csv").set_index("ImageID").reindex(truth.index)
        mae = float(np.abs(ages["age_years"] - true_age).mean()) if "age_years" in ages else float("nan")
        train_s = seconds[mask_run] + seconds[age_run] + seconds[gender_run]
        table.append({"row": label, "age_mae": mae, "age_f1": scores["tasks"]["age"],
                      "gender_f1": scores["tasks"]["gender"], "macro_f1": scores["macro_f1"], "train_s": train_s,
                      "infer_s": infer_s, "age_run": str(age_run), "gender_run": str(gender_run)})
        r = table[-1]
        print(f"  -> | {label} | {'-' if np.isnan(mae) else f'{mae:.2f}'} | {r['age_f1']:.4f} | {r['gender_f1']:.4f} | "
              f"{r['macro_f1']:.4f} | {train_s:.0f} |", flush=True)

    print("\n| age target, extra faces | age MAE (years) | age-band F1 | gender F1 | 18-class macro F1 | train s |")
    print("|---|---|---|---|---|---|")
    for r in table:
        mae = "-" if np.isnan(r["age_mae"]) else f"{r['age_mae']:.2f}"
        print(f"| {r['row']} | {mae} | {r['age_f1']:.4f} | {r['gender_f1']:.4f} | {r['macro_f1']:.4f} | {r['train_s']:.0f} |")
    print(noise_lines(truth.to_numpy(), answers, people))
    print(f"\nmask run shared by every row: {mask_run}; train s: the three runs' epoch seconds; "
          f"wall time {time.perf_counter() - started:.0f} s")
    (project / "age.json").write_text(json.dumps({"budget": budget, "args": {k: str(v) for k, v in vars(args).items()},
                                                  "main_images": main_images, "results": table}, indent=1))


def noise_lines(truth: np.ndarray, answers: dict, people, draws: int = 1000) -> str:
    """95 % intervals over resamples of whole eval people: each row's 18-class and age-band F1, and each
    row's difference to the first (paired: the same resamples for every row)."""
    f1 = bootstrap_macro_f1(truth, answers, people, 18, draws=draws)
    band_f1 = bootstrap_macro_f1(decode(truth)[2], {k: decode(v)[2] for k, v in answers.items()}, people, 3,
                                 draws=draws)
    first = next(iter(answers))
    lines = [f"\n95 % intervals over {draws} resamples of the {len(set(people))} eval people (18-class; age band):"]
    lines += [f"  {label}: {interval(f1[label])}; {interval(band_f1[label])}" for label in answers]
    lines += [f"  {label} minus {first}: {np.mean(f1[label] - f1[first]):+.3f} ({interval(f1[label] - f1[first], '+')}); "
              f"age band {np.mean(band_f1[label] - band_f1[first]):+.3f} "
              f"({interval(band_f1[label] - band_f1[first], '+')})" for label in list(answers)[1:]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
