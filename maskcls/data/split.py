"""Split by person, never by image: stratified K-fold over people on gender x age band."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .labels import DEFAULT_AGE_BOUNDS, age_band


def people_table(images: pd.DataFrame) -> pd.DataFrame:
    """One row per person (person, gender, age, age_band), sorted by id so the split is order-independent."""
    return images.groupby("person", sort=True)[["gender", "age", "age_band"]].first().reset_index()


def fold_of_people(images: pd.DataFrame, folds: int, seed: int) -> pd.Series:
    """person id -> fold index (0..folds-1), stratified on gender x age band.

    The strata use the default band edges whatever a task's own ``age_bounds``: the three specialists
    then hold out the same people, so their validation predictions can be merged into 18 classes.
    """
    people = people_table(images)
    strata = people["gender"] * 3 + age_band(people["age"].to_numpy(), DEFAULT_AGE_BOUNDS)
    # a stratum with fewer people than folds cannot be spread over every fold; merge it into "rare"
    counts = strata.map(strata.value_counts())
    strata = strata.where(counts >= folds, -1)
    from sklearn.model_selection import StratifiedKFold  # here: a second to import; `maskcls --help` needs none of it

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold = np.empty(len(people), dtype=int)
    for k, (_, val_idx) in enumerate(splitter.split(np.zeros(len(people)), strata)):
        fold[val_idx] = k
    return pd.Series(fold, index=people["person"], name="fold")


def split_images(images: pd.DataFrame, folds: int, fold: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, val) image tables: the people of fold ``fold`` are val, everyone else is train."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold must lie in 0..{folds - 1}, got {fold}")
    is_val = images["person"].map(fold_of_people(images, folds, seed)) == fold
    return images[~is_val].reset_index(drop=True), images[is_val].reset_index(drop=True)
