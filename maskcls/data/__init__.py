"""The data layer: layout reading and checks, labels, label fixes, the person-level split."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from .fixes import COMPETITION_FIXES, LabelFixes, apply_fixes, load_fixes
from .labels import DEFAULT_AGE_BOUNDS, NUM_CLASSES, age_band, class_name, decode, encode
from .layout import DataError, Problem, check_dataset, read_eval_images, read_train_images, scan_eval, scan_train
from .split import fold_of_people, people_table, split_images

__all__ = [
    "COMPETITION_FIXES", "DEFAULT_AGE_BOUNDS", "NUM_CLASSES", "DataError", "LabelFixes", "Problem",
    "age_band", "apply_fixes", "check_dataset", "class_name", "decode", "encode", "fold_of_people",
    "labelled", "load_fixes", "load_train", "people_table", "read_eval_images", "read_train_images",
    "scan_eval", "scan_train", "split_images",
]


def labelled(images: pd.DataFrame, age_bounds: Sequence[int] = DEFAULT_AGE_BOUNDS) -> pd.DataFrame:
    """The image table with ``age_band`` and the 18-class ``label`` columns (re)computed."""
    out = images.copy()
    out["age_band"] = age_band(out["age"].to_numpy(), age_bounds)
    out["label"] = encode(out["mask"].to_numpy(), out["gender"].to_numpy(), out["age_band"].to_numpy())
    return out


def load_train(root: str | Path, age_bounds: Sequence[int] = DEFAULT_AGE_BOUNDS,
               fixes: str | Path | LabelFixes | None = None) -> pd.DataFrame:
    """Train images with fixes applied and labels computed; raises DataError naming the first bad path."""
    images = read_train_images(Path(root))
    fixes = fixes if isinstance(fixes, LabelFixes) else load_fixes(fixes)
    return labelled(apply_fixes(images, fixes), age_bounds)
