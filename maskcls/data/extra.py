"""Extra faces: folders of ``images/`` + ``labels.csv`` that add training rows to the tasks whose label they carry.

A specialist needs only its own label, so it can learn from any dataset that has it. An extra folder:

    <folder>/images/<file>       a JPEG, PNG or WebP image (subfolders allowed)
    <folder>/labels.csv          file, and any of: age (whole years 0-120), gender (male / female),
                                 mask (wear / incorrect / not_wear); other columns are ignored

An empty cell means "not labelled". A task takes the rows carrying every label it is made of (age: age;
gender: gender; mask: mask; joint: all three), only into training: validation stays the main data's
person fold. Images of ``images/`` that ``labels.csv`` does not list are ignored. Each extra image is its
own "person". Crops are cached per folder, beside it as for a dataset (``crop.build_train_image_loader`` reads
them; ``maskcls crop FOLDER`` or the first training that uses the folder detects them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .labels import GENDER_BY_NAME, MASK_NAMES, age_band, encode
from .layout import DataError, Problem, _raise_first, decode_problems

LABEL_COLUMNS = ("age", "gender", "mask")
MASK_BY_NAME = {name: code for code, name in enumerate(MASK_NAMES)}  # wear, incorrect, not_wear
MAX_AGE = 120
EXTRA_SPLIT = "extra"  # the split name of extra images in a crop cache manifest


def is_extra_folder(folder: str | Path) -> bool:
    """A folder in the extra layout (``labels.csv`` or ``images/`` at its top) rather than the competition's."""
    folder = Path(folder)
    return ((folder / "labels.csv").is_file() or (folder / "images").is_dir()) and not (folder / "train").exists()


def _label_problem(column: str, value: str) -> str | None:
    """Why a non-empty label cell is wrong, or None."""
    if column == "age":
        try:
            age = float(value)
        except ValueError:
            age = None
        if age is None or not age.is_integer() or not 0 <= age <= MAX_AGE:
            return f"age {value!r} is not a whole number 0-{MAX_AGE}"
    elif column == "gender" and value not in GENDER_BY_NAME:
        return f"gender {value!r} is not one of {', '.join(GENDER_BY_NAME)}"
    elif column == "mask" and value not in MASK_BY_NAME:
        return f"mask {value!r} is not one of {', '.join(MASK_BY_NAME)}"
    return None


def scan_extra(folder: str | Path) -> tuple[pd.DataFrame, list[Problem]]:
    """The labelled rows (``file``, ``path``, ``age``, ``gender``, ``mask``; -1 where unlabelled) and every
    problem found, one per bad cell or file, each naming labels.csv, its line and the image file."""
    folder = Path(folder)
    empty = pd.DataFrame(columns=["file", "path", *LABEL_COLUMNS])
    if not folder.is_dir():
        return empty, [Problem(folder, "extra data folder does not exist")]
    images_dir, csv_path = folder / "images", folder / "labels.csv"
    problems = [] if images_dir.is_dir() else [Problem(images_dir, "folder is missing")]
    if not csv_path.is_file():
        return empty, problems + [Problem(csv_path, "file is missing")]
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        return empty, problems + [Problem(csv_path, f"cannot be read as CSV ({str(err).splitlines()[0]})")]
    labels = [c for c in LABEL_COLUMNS if c in table.columns]
    if "file" not in table.columns:
        problems.append(Problem(csv_path, "missing column file (the image's name in images/)"))
    if not labels:
        problems.append(Problem(csv_path, f"no label column: expected any of {', '.join(LABEL_COLUMNS)}"))
    if "file" not in table.columns or not labels:
        return empty, problems
    if table.empty:
        return empty, problems + [Problem(csv_path, "no rows")]
    rows, seen = [], set()
    for index, row in table.iterrows():
        where = f"line {index + 2}: {row['file'] or '(empty file)'}"
        path = images_dir / row["file"]
        bad = [message for message in (_label_problem(c, row[c].strip()) for c in labels if row[c].strip()) if message]
        if not row["file"] or ".." in Path(row["file"]).parts or Path(row["file"]).is_absolute():
            bad.append("file must name an image inside images/")
        elif row["file"] in seen:
            bad.append("file listed twice")
        elif images_dir.is_dir() and not path.is_file():
            bad.append(f"no image file {path}")
        seen.add(row["file"])
        problems += [Problem(csv_path, f"{where}: {message}") for message in bad]
        if not bad:
            rows.append({"file": row["file"], "path": str(path),
                         **{c: _code(c, row[c].strip()) if c in labels else -1 for c in LABEL_COLUMNS}})
    return pd.DataFrame(rows, columns=empty.columns), problems


def _code(column: str, value: str) -> int:
    if not value:
        return -1
    if column == "age":
        return int(float(value))
    return GENDER_BY_NAME[value] if column == "gender" else MASK_BY_NAME[value]


def check_extra(folder: str | Path, decode: bool = True, progress=None) -> list[Problem]:
    """Every problem of an extra folder: labels.csv, its cells, missing files and (``decode``) pixels."""
    table, problems = scan_extra(folder)
    if decode and not table.empty:
        problems += decode_problems(table["path"], progress=progress, large=True)
    return problems


def read_extra(folder: str | Path) -> pd.DataFrame:
    """The labelled rows of an extra folder; raises DataError naming the first problem."""
    table, problems = scan_extra(folder)
    _raise_first(problems)
    return table


def extra_images(folders: Sequence[str | Path], labels: Sequence[str], age_bounds: Sequence[int],
                 limit: int = 0, seed: int = 0) -> pd.DataFrame:
    """Rows of ``folders`` that carry every one of ``labels``, in the train image table's columns (person,
    gender, age, mask, path, age_band, label; -1 for a label the row lacks), with ``extra`` True. ``limit``
    > 0 keeps a seeded random sample of that many rows per folder."""
    tables = []
    for folder in folders:
        table = read_extra(folder)
        table = table[(table[list(labels)] >= 0).all(axis=1)] if labels else table
        if table.empty:
            raise DataError(f"{Path(folder) / 'labels.csv'}: no row carries {' and '.join(labels)}, which this task needs")
        if 0 < limit < len(table):
            table = table.sample(n=limit, random_state=seed).sort_index()
        tables.append(table.assign(person=[f"extra:{Path(folder).name}/{f}" for f in table["file"]]))
    if not tables:
        return pd.DataFrame(columns=["person", "gender", "race", "age", "stem", "mask", "path", "age_band", "label",
                                     "extra"])
    out = pd.concat(tables, ignore_index=True)
    bands = np.where(out["age"] >= 0, age_band(out["age"].clip(lower=0).to_numpy(), age_bounds), -1)
    labelled = (out[["mask", "gender"]] >= 0).all(axis=1).to_numpy() & (bands >= 0)
    return pd.DataFrame({"person": out["person"], "gender": out["gender"], "race": "", "age": out["age"],
                         "stem": "", "mask": out["mask"], "path": out["path"], "age_band": bands,
                         "label": np.where(labelled, encode(out["mask"].to_numpy(), out["gender"].to_numpy(), bands), -1),
                         "extra": True})


def with_extra(train: pd.DataFrame, config, labels: Sequence[str]) -> pd.DataFrame:
    """The main training images (``extra`` False) followed by the config's extra rows for a task made of
    ``labels``; validation images never pass through here."""
    main = train.assign(extra=False)
    if not config.extra_data:
        return main
    extra = extra_images(config.extra_data, labels, config.age_bounds, config.extra_limit, config.seed)
    return pd.concat([main, extra[[c for c in main.columns if c in extra.columns]]], ignore_index=True)


def sample_weights(images: pd.DataFrame, targets: np.ndarray, num_classes: int, config) -> np.ndarray | None:
    """Per-image sampling weights: inverse class frequency (``sampler=weighted``) times ``extra_weight`` for
    extra rows; None (a plain shuffle) when every weight would be equal."""
    weights = np.ones(len(images))
    if config.sampler == "weighted":
        counts = np.bincount(targets, minlength=num_classes)
        weights = (1.0 / np.maximum(counts, 1))[targets]
    if config.extra_weight != 1.0 and "extra" in images:
        weights = weights * np.where(images["extra"].to_numpy(dtype=bool), config.extra_weight, 1.0)
    return None if config.sampler != "weighted" and np.all(weights == weights[0]) else weights
