"""A calibrated band decision on top of an age model: fitted on out-of-fold tables, scored on eval sets.

    python bench/age_decision.py --run runs/age/cv              # a CV folder: fitted on its oof.csv
    python bench/age_decision.py --run runs/age/exp             # a run: fitted on its validation people
    python bench/age_decision.py --run runs/age/cv --sets ../shared/data/faces

An age model's errors pull ages toward the middle of its training distribution, across the band edges
(docs/benchmarks.md, "Age"). Two decisions that could undo that, each fitted for the age-band macro F1 on
a CV folder's ``oof.csv`` (every training person, predicted by the fold that held it out; `maskcls cv age
--tta`) or on a run's validation people (`maskcls predict age RUN DATA --split val --tta`), then applied
unchanged to each eval set's predictions of the same run or fold ensemble (`maskcls predict age RUN DATA
--tta`):

- ``band bias``: log-probability offsets for the <30 and old bands (the 30-59 band fixed at 0), the best
  pair on a grid; a tie keeps the smaller offsets.
- ``age edges``: the band of the expected age in years (``age_years``: year heads only) under the two
  edges that score best, searched from 24 to 36 and 48 to 64.

And one family fitted on nothing: ``prior A``, ``argmax(log p - A log prior)`` with the bands' share of the
images the run's config trains on (the main training images plus the extra rows with an age), for A in 0.25 .. 1 (A = 1
is the balanced decision that equalises recall when the model is calibrated). Per eval set it also prints
how the expected age follows the true one (year heads): MAE, mean error, slope and correlation, and the
mean error within age ranges, which tell a shrinking model (slope < 1) from a biased one.

Prints the rules fitted, each rule's age-band F1 on the OOF table (optimistic: fitted there) and, per
eval set, the age-band F1 of the argmax and of each rule with 95 % intervals over 1000 resamples of the
people, and each rule's paired difference to the argmax.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `python bench/age_decision.py`
from bench.common import maskcls  # noqa: E402

from maskcls.bias import BIAS_GRID, log_scores  # noqa: E402
from maskcls.config import config_from_dict  # noqa: E402
from maskcls.data import load_train  # noqa: E402
from maskcls.data.extra import with_extra  # noqa: E402
from maskcls.metrics import bootstrap_macro_f1, fast_macro_f1  # noqa: E402
from maskcls.tasks import get_task  # noqa: E402
from maskcls.years import AGE_COLUMN  # noqa: E402

BANDS = 3
LOW_EDGES, HIGH_EDGES = range(24, 37), range(48, 65)
PRIOR_POWERS = (0.25, 0.5, 0.75, 1.0)
AGE_RANGES = [0, 25, 30, 40, 50, 60, 70, 200]
DEFAULT_SETS = [Path("../shared/data/faces"), Path("../shared/data/ood_ffhq")]


def band_probs(table: pd.DataFrame) -> np.ndarray:
    return table[[f"p{k}" for k in range(BANDS)]].to_numpy()


def fit_band_bias(probs: np.ndarray, bands: np.ndarray) -> tuple[np.ndarray, float]:
    """(offsets for the three bands, F1) maximising the age-band macro F1 of ``argmax(log p + offsets)``."""
    scores = log_scores(probs)
    best, best_f1 = np.zeros(BANDS), fast_macro_f1(bands, scores.argmax(1), BANDS)
    for low, old in sorted(itertools.product(BIAS_GRID, BIAS_GRID), key=lambda pair: abs(pair[0]) + abs(pair[1])):
        offsets = np.array([low, 0.0, old])
        f1 = fast_macro_f1(bands, (scores + offsets).argmax(1), BANDS)
        if f1 > best_f1 + 1e-12:
            best, best_f1 = offsets, f1
    return best, best_f1


def fit_age_edges(ages: np.ndarray, bands: np.ndarray) -> tuple[tuple[int, int], float]:
    """(edges, F1): the band edges on the expected age that maximise the age-band macro F1."""
    scored = {(lo, hi): fast_macro_f1(bands, np.digitize(ages, [lo, hi]), BANDS)
              for lo, hi in itertools.product(LOW_EDGES, HIGH_EDGES)}
    edges = max(scored, key=lambda e: (scored[e], -abs(e[0] - 30) - abs(e[1] - 60)))  # a tie: nearest 30 / 60
    return edges, scored[edges]


def training_prior(run: Path) -> np.ndarray:
    """The bands' share of the images the run's config trains on, read as the engine reads them (label fixes,
    the extra rows with an age, ``extra_limit``); every main person counts, the validation people too."""
    config = config_from_dict(yaml.safe_load(sorted(run.glob("**/config.yaml"))[0].read_text()))
    main = load_train(config.data_dir, config.age_bounds, config.label_fixes)
    images = with_extra(main, config, get_task("age").labels)
    counts = np.bincount(images["age_band"].to_numpy(), minlength=BANDS)
    return counts / counts.sum()


def decisions(table: pd.DataFrame, offsets: np.ndarray, edges: tuple[int, int] | None,
              prior: np.ndarray) -> dict[str, np.ndarray]:
    """Each rule's band per row of a prediction table."""
    scores = log_scores(band_probs(table))
    out = {"argmax": scores.argmax(1), "band bias": (scores + offsets).argmax(1)}
    if edges is not None:
        out["age edges"] = np.digitize(table[AGE_COLUMN].to_numpy(), list(edges))
    out.update({f"prior {power:g}": (scores - power * np.log(prior)).argmax(1) for power in PRIOR_POWERS})
    return out


def age_fit_lines(table: pd.DataFrame) -> list[str]:
    """How the expected age follows the true age: overall, then the mean error within age ranges."""
    true, pred = table["age"].to_numpy(float), table[AGE_COLUMN].to_numpy(float)
    slope = np.polyfit(true, pred, 1)[0]
    lines = [f"  expected age: MAE {np.abs(pred - true).mean():.2f}, mean error {np.mean(pred - true):+.2f}, "
             f"slope {slope:.2f}, correlation {np.corrcoef(true, pred)[0, 1]:.2f} (true sd {true.std():.1f}, "
             f"predicted sd {pred.std():.1f})"]
    ranges = pd.cut(true, AGE_RANGES, right=False)
    errors = pd.Series(pred - true).groupby(ranges, observed=True).agg(["mean", "size"])
    lines.append("  mean error by true age: " + ", ".join(
        f"{r.left}-{min(r.right, 100) - 1}: {row['mean']:+.1f} ({int(row['size'])})" for r, row in errors.iterrows()))
    return lines


def predictions(run: Path, data: Path, split: str, out_dir: Path) -> pd.DataFrame:
    """The run's (or fold ensemble's) TTA predictions of ``split`` on ``data``, made once into ``out_dir``."""
    out = out_dir / f"pred_{split}_tta_{data.name}.csv"
    if not out.is_file():
        maskcls("predict", "age", str(run), str(data), "--split", split, "--tta", "--out", str(out))
    return pd.read_csv(out)


def fit_table(run: Path, out_dir: Path) -> tuple[pd.DataFrame, str]:
    """The table the rules are fitted on: a CV folder's oof.csv, else the run's validation people."""
    if (run / "oof.csv").is_file():
        return pd.read_csv(run / "oof.csv"), str(run / "oof.csv")
    config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else None
    if config is None:
        sys.exit(f"{run}: neither oof.csv (a CV folder) nor config.yaml (a run folder)")
    return predictions(run, Path(config["data_dir"]), "val", out_dir), f"{run}'s validation people"


def interval(draws: np.ndarray, sign: str = "") -> str:
    return f"{np.percentile(draws, 2.5):{sign}.3f} .. {np.percentile(draws, 97.5):{sign}.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="an age CV folder (maskcls cv age --tta) or run folder")
    parser.add_argument("--sets", type=Path, nargs="+", default=DEFAULT_SETS, help="datasets with eval/labels.csv")
    parser.add_argument("--project", type=Path, default=None, help="where predictions go (default: the run folder)")
    args = parser.parse_args()
    out_dir = args.project or args.run
    out_dir.mkdir(parents=True, exist_ok=True)
    oof, fitted_on = fit_table(args.run, out_dir)
    bands = oof["target"].to_numpy()
    offsets, bias_f1 = fit_band_bias(band_probs(oof), bands)
    edges, edges_f1 = fit_age_edges(oof[AGE_COLUMN].to_numpy(), bands) if AGE_COLUMN in oof else (None, float("nan"))
    print(f"fitted on {fitted_on} ({len(oof)} images): argmax F1 {fast_macro_f1(bands, band_probs(oof).argmax(1), BANDS):.4f}; "
          f"band bias {offsets.tolist()} -> {bias_f1:.4f}; age edges {edges} -> {edges_f1:.4f}", flush=True)
    prior = training_prior(args.run)
    print(f"training images' band shares (prior rules): {np.round(prior, 3).tolist()}", flush=True)
    summary = {"run": str(args.run), "fitted_on": fitted_on, "band_bias": offsets.tolist(), "age_edges": edges,
               "training_prior": prior.round(4).tolist(), "oof_f1": {"band bias": bias_f1, "age edges": edges_f1},
               "sets": {}}
    for data in args.sets:
        labels_csv = data / "eval" / "labels.csv"
        if not labels_csv.is_file():
            print(f"skip {data}: no eval/labels.csv")
            continue
        labels = pd.read_csv(labels_csv, dtype={"person": str})
        table = predictions(args.run, data, "eval", out_dir).merge(labels, on="ImageID")
        truth = table["age_band"].to_numpy()
        rules = decisions(table, offsets, edges, prior)
        draws = bootstrap_macro_f1(truth, rules, table["person"].to_numpy(), BANDS)
        print(f"\n{data} ({len(table)} images, {table['person'].nunique()} people): age-band macro F1, 95 % intervals")
        summary["sets"][str(data)] = {}
        for rule, pred in rules.items():
            f1 = fast_macro_f1(truth, pred, BANDS)
            paired = "" if rule == "argmax" else (f"; minus argmax {np.mean(draws[rule] - draws['argmax']):+.3f} "
                                                  f"({interval(draws[rule] - draws['argmax'], '+')})")
            print(f"  {rule:10s} {f1:.3f} ({interval(draws[rule])}){paired}")
            summary["sets"][str(data)][rule] = round(f1, 4)
        if AGE_COLUMN in table:
            print("\n".join(age_fit_lines(table)))
        calls = {rule: int((pred == BANDS - 1).sum()) for rule, pred in rules.items()}
        print(f"  images called old (true {int((truth == BANDS - 1).sum())}): "
              + ", ".join(f"{rule} {n}" for rule, n in calls.items()))
    out = out_dir / "age_decision.json"
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
