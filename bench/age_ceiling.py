"""How good must the age model be for an 18-class macro F1 of 0.80? A simulation on the eval labels.

    python bench/age_ceiling.py

Takes the true mask and gender of every eval image (perfect specialists) and an age estimate that misses
the real age by Laplace noise of a given mean absolute error (MAE), drawn once per person: all seven
images of a person come from one photo, so their errors go together. Prints the age-band macro F1 and the
18-class macro F1 for each MAE (mean of 50 draws): the best the pipeline can score with such an age model.
Reads eval/labels.csv, which only scoring may read; nothing here trains or predicts.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from maskcls.data.labels import DEFAULT_AGE_BOUNDS, age_band, encode

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"


def simulated_f1(labels: pd.DataFrame, mae: float, rng: np.random.Generator) -> tuple[float, float]:
    """(age-band macro F1, 18-class macro F1) with perfect mask and gender and ages off by ``mae`` years."""
    people = labels["person"].unique()
    error = pd.Series(rng.laplace(0.0, mae, len(people)), index=people)  # Laplace(0, b) has MAE b
    bands = age_band(labels["age"].to_numpy() + error.loc[labels["person"]].to_numpy() + 0.5, DEFAULT_AGE_BOUNDS)
    label = encode(labels["mask"].to_numpy(), labels["gender"].to_numpy(), bands)
    return (f1_score(labels["age_band"], bands, average="macro"), f1_score(labels["ans"], label, average="macro"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--draws", type=int, default=50)
    args = parser.parse_args()
    path = args.data / "eval" / "labels.csv"
    if not path.is_file():
        print(f"skip: no {path}")
        return
    labels = pd.read_csv(path, dtype={"person": str})
    rng = np.random.default_rng(0)
    print("| age MAE (years) | age-band F1 | 18-class F1, perfect mask and gender |")
    print("|---|---|---|")
    for mae in (2, 3, 4, 5, 6, 8, 10, 12):
        age_f1, f1 = np.mean([simulated_f1(labels, mae, rng) for _ in range(args.draws)], axis=0)
        print(f"| {mae} | {age_f1:.3f} | {f1:.3f} |", flush=True)


if __name__ == "__main__":
    main()
