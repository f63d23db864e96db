"""Read the competition layout: ``train/images/{id}_{gender}_{race}_{age}/`` + ``train/train.csv``,
``eval/images/*`` + ``eval/info.csv``.

Scanning collects every problem it finds (``data check`` reports them all); reading for training
raises the first one as a :class:`DataError`, a one-line message that names the path.
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image

from ..errors import DataError
from .images import open_rgb
from .labels import GENDER_BY_NAME, IMAGE_EXTENSIONS, IMAGE_STEMS, MASK_BY_STEM

# the race is any word without "_" (Européen, Middle-Eastern): the data's own spelling, never validated
FOLDER_RE = re.compile(r"^(?P<id>[0-9A-Za-z-]+)_(?P<gender>male|female)_(?P<race>[^_]+)_(?P<age>\d{1,3})$")
TRAIN_COLUMNS = ("id", "gender", "race", "age", "path")
EVAL_COLUMNS = ("ImageID", "ans")


@dataclass(frozen=True)
class Problem:
    path: Path
    message: str
    warning: bool = False  # worth a look, not wrong: `data check` still passes

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def visible(path: Path) -> bool:
    """False for dot-files and dot-folders (macOS ``._*``, ``.DS_Store``), which are ignored."""
    return not path.name.startswith(".")


def parse_folder(name: str) -> dict | None:
    """``{id, gender, race, age}`` from a profile folder name, or None when it does not parse."""
    match = FOLDER_RE.match(name)
    if match is None:
        return None
    return {"id": match["id"], "gender": match["gender"], "race": match["race"], "age": int(match["age"])}


def _read_csv(path: Path, columns: tuple[str, ...], problems: list[Problem]) -> pd.DataFrame | None:
    if not path.is_file():
        problems.append(Problem(path, "file is missing"))
        return None
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        problems.append(Problem(path, f"cannot be read as CSV ({str(err).splitlines()[0]})"))
        return None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        problems.append(Problem(path, f"missing column(s) {', '.join(missing)}; expected {','.join(columns)}"))
        return None
    return table


def _profile_images(folder: Path, problems: list[Problem]) -> dict[str, Path]:
    """stem -> image path for one profile folder; missing, duplicated and unexpected files are problems."""
    found: dict[str, Path] = {}
    for path in sorted(p for p in folder.iterdir() if visible(p)):
        if path.stem not in MASK_BY_STEM or path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            problems.append(Problem(path, f"unexpected file; a profile holds only {', '.join(IMAGE_STEMS)} "
                                          f"as {'/'.join(IMAGE_EXTENSIONS)}"))
        elif path.stem in found:
            problems.append(Problem(path, f"duplicate image: {found[path.stem].name} is also there"))
        else:
            found[path.stem] = path
    for stem in IMAGE_STEMS:
        if stem not in found:
            problems.append(Problem(folder / stem, f"missing image {stem}.(jpg|jpeg|png) in profile"))
    return found


def scan_train(root: Path) -> tuple[pd.DataFrame, list[Problem]]:
    """One row per train image (person, gender, race, age, stem, mask, path) and every problem found."""
    root = Path(root)
    problems: list[Problem] = []
    images_dir, csv_path = root / "train" / "images", root / "train" / "train.csv"
    if not images_dir.is_dir():
        return _image_table([]), [Problem(images_dir, "folder is missing")]
    table = _read_csv(csv_path, TRAIN_COLUMNS, problems)

    rows, folders = [], {}
    for folder in sorted(p for p in images_dir.iterdir() if visible(p)):
        if not folder.is_dir():
            problems.append(Problem(folder, "unexpected file; train/images holds only profile folders"))
            continue
        meta = parse_folder(folder.name)
        if meta is None:
            problems.append(Problem(folder, "folder name does not parse as {id}_{male|female}_{race}_{age}"))
            continue
        if meta["id"] in folders:
            problems.append(Problem(folder, f"duplicated id {meta['id']} (also {folders[meta['id']].name})"))
            continue
        folders[meta["id"]] = folder
        for stem, path in _profile_images(folder, problems).items():
            rows.append({"person": meta["id"], "gender": GENDER_BY_NAME[meta["gender"]], "race": meta["race"],
                         "age": meta["age"], "stem": stem, "mask": MASK_BY_STEM[stem], "path": str(path)})

    if table is not None:
        problems += _csv_against_folders(table, csv_path, images_dir, folders)
    if not folders:
        problems.append(Problem(images_dir, "empty dataset: no profile folders"))
    return _image_table(rows), problems


def _csv_against_folders(table: pd.DataFrame, csv_path: Path, images_dir: Path, folders: dict) -> list[Problem]:
    problems = []
    for line, dup in table.loc[table["id"].duplicated(keep="first"), "id"].items():
        problems.append(Problem(csv_path, f"line {line + 2}: duplicated id {dup}"))
    listed = set()
    for line, row in table.iterrows():
        listed.add(row["path"])
        folder = images_dir / row["path"]
        # an empty path or ".." would name images_dir or its parent: not a profile folder
        if folder.parent != images_dir or not visible(folder) or not folder.is_dir():
            problems.append(Problem(csv_path, f"line {line + 2}: no folder {folder} for id {row['id']}"))
            continue
        meta = parse_folder(row["path"])
        if meta is not None and (meta["id"], meta["gender"], str(meta["age"])) != (row["id"], row["gender"], row["age"]):
            problems.append(Problem(csv_path, f"line {line + 2}: id/gender/age {row['id']},{row['gender']},{row['age']} "
                                              f"disagree with folder {row['path']}"))
    for folder in folders.values():
        if folder.name not in listed:
            problems.append(Problem(folder, f"folder has no row in {csv_path}"))
    return problems


def _image_table(rows: list[dict]) -> pd.DataFrame:
    columns = ["person", "gender", "race", "age", "stem", "mask", "path"]
    return pd.DataFrame(rows, columns=columns)


def scan_eval(root: Path) -> tuple[pd.DataFrame, list[Problem]]:
    """``info.csv`` in its own order with the image path added, and every problem found."""
    root = Path(root)
    problems: list[Problem] = []
    csv_path, images_dir = root / "eval" / "info.csv", root / "eval" / "images"
    table = _read_csv(csv_path, EVAL_COLUMNS, problems)
    if table is None:
        return pd.DataFrame(columns=["ImageID", "ans", "path"]), problems
    for line, dup in table.loc[table["ImageID"].duplicated(), "ImageID"].items():
        problems.append(Problem(csv_path, f"line {line + 2}: duplicated ImageID {dup}"))
    table = table[["ImageID", "ans"]].copy()
    refused = table["ImageID"].map(lambda name: _outside_folder(name, images_dir))
    # a refused ImageID gets no path: nothing outside eval/images is ever opened, not even by `data check`
    table["path"] = ["" if why else str(images_dir / name) for name, why in zip(table["ImageID"], refused)]
    for line, name in table["ImageID"].items():
        if refused[line]:
            problems.append(Problem(csv_path, f"line {line + 2}: ImageID {name!r} {refused[line]}"))
        elif not Path(table["path"][line]).is_file():
            problems.append(Problem(csv_path, f"line {line + 2}: ImageID {name} has no file {table['path'][line]}"))
    if table.empty:
        problems.append(Problem(csv_path, "empty dataset: no ImageID rows"))
    return table, problems


def _outside_folder(name: str, folder: Path) -> str:
    """Why ``name`` does not name a file inside ``folder`` (a path, ``..``, a link out of it), or ""."""
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        return f"is not a plain file name in {folder}"
    path = folder / name
    # a link to a file elsewhere would read outside the data folder as surely as a path would
    if path.is_symlink() and folder.resolve() not in path.resolve().parents:
        return f"is a link to {path.resolve()}, outside {folder}"
    return ""


def decode_problem(path: str | Path, large: bool = False) -> Problem | None:
    """A Problem when the image does not decode as every command reads it (``open_rgb``: truncated, corrupt, not an
    accepted format or pixel mode, too many pixels), else None; with ``large``, a warning for an image over Pillow's
    decompression-bomb warning limit (it decodes, slowly), else None."""
    try:
        image = open_rgb(path)
    except DataError as err:
        return Problem(Path(path), str(err).removeprefix(f"{path}: "))
    if large and image.width * image.height > Image.MAX_IMAGE_PIXELS:
        return Problem(Path(path), f"large image: {image.width} x {image.height} pixels "
                                   f"({image.width * image.height / 1e6:.0f} megapixels); it decodes, slowly", True)
    return None


def decode_problems(paths, workers: int = 4, progress=None, large: bool = False) -> list[Problem]:
    """Decode every image (threads: PIL releases the GIL while decoding); ``large``: warn of huge ones too."""
    paths = list(paths)
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda path: decode_problem(path, large), paths)
        return [p for p in (progress(results, total=len(paths)) if progress else results) if p is not None]


def check_dataset(root: Path, decode: bool = True, progress=None) -> list[Problem]:
    """Every problem in a dataset: layout, CSVs and (with ``decode``) every image's pixels."""
    root = Path(root)
    if root.is_file():
        return [Problem(root, "is a file, not a dataset folder (train/ and eval/)")]
    if not root.is_dir():
        return [Problem(root, "dataset folder does not exist")]
    train, problems = scan_train(root)
    paths = list(train["path"])
    if (root / "eval").exists():
        evals, eval_problems = scan_eval(root)
        problems += eval_problems
        paths += [p for p in evals["path"] if Path(p).is_file()]
    if decode:
        problems += decode_problems(paths, progress=progress, large=True)
    return problems


def _raise_first(problems: list[Problem]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more problem(s): run `maskcls data check`)" if len(problems) > 1 else ""
        raise DataError(f"{problems[0]}{more}")


def read_train_images(root: Path) -> pd.DataFrame:
    """The train image table; raises DataError naming the first bad path."""
    table, problems = scan_train(Path(root))
    _raise_first(problems)
    return table


def read_eval_images(root: Path) -> pd.DataFrame:
    """``eval/info.csv`` rows in order with their image paths; raises DataError naming the first bad path."""
    table, problems = scan_eval(Path(root))
    _raise_first(problems)
    return table
