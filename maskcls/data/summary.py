"""Counts a person would check first: people per gender x age band, images per 18 classes."""
from __future__ import annotations

import pandas as pd

from .labels import AGE_NAMES, GENDER_NAMES, NUM_CLASSES, class_name
from .split import people_table


def people_counts(images: pd.DataFrame) -> pd.DataFrame:
    """People per gender (rows, with total) x age band (columns, with total)."""
    people = people_table(images)
    table = pd.crosstab(people["gender"].map(dict(enumerate(GENDER_NAMES))),
                        people["age_band"].map(dict(enumerate(AGE_NAMES))), margins=True, margins_name="total")
    order = [n for n in AGE_NAMES if n in table.columns] + ["total"]
    return table.reindex(columns=order, fill_value=0)


def class_counts(images: pd.DataFrame) -> pd.Series:
    """Images per 18-class label, every class present (0 when absent)."""
    counts = images["label"].value_counts().reindex(range(NUM_CLASSES), fill_value=0)
    counts.index = [f"{i:2d} {class_name(i)}" for i in range(NUM_CLASSES)]
    return counts


def format_summary(images: pd.DataFrame) -> str:
    people = images["person"].nunique()
    races = images.groupby("person")["race"].first().value_counts()
    lines = [f"{people} people, {len(images)} images; races: " + ", ".join(f"{r} {n}" for r, n in races.items()),
             "", "people per gender x age band:", people_counts(images).to_string(), "",
             "images per class (mask/gender/age):", class_counts(images).to_string()]
    return "\n".join(lines)
