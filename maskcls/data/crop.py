"""Face crops of a dataset: the cache of crops and the image loader that reads it (finding and cutting the face
itself: ``faces.py``).

The competition photos are upper-body shots; the strong entries cropped the face first with
facenet-pytorch's MTCNN and fell back to a centre crop. ``run_crop`` detects once for a whole dataset, with
MTCNN or RetinaFace (``CropSettings.detector``, the config's ``crop_detector``), into a cache folder
(``manifest.csv``: the face box of every image, or none; one folder per detector, ``detections_dir``): run by
``maskcls crop``, or by the first training that needs the boxes (``fill_crop_caches``). ``build_image_loader``
reads that cache, cuts the box with the run's geometry (margin, square, fallback: ``faces.crop_box``) and detects
on the fly, with the same code and rounding, where the cache has no valid entry. The geometry is not in the
cache, so a run may change the margin without detecting again. Faces are found on a copy of at most
``DETECT_MAX_SIDE`` pixels a side, their boxes mapped back to the image.

Cache validity: an entry is used only when the source file's SHA-1 and the detection settings' hash both
match, so a changed image or setting is redone and everything else is kept.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
from PIL import Image

from ..errors import ConfigError
from ..io import atomic_write_csv
from .extra import EXTRA_SPLIT, is_extra_folder, scan_extra
from .faces import CropSettings, Face, center_box, create_detectors, crop_box, face_in_image, pick_faces
from .images import open_bounded, open_rgb
from .layout import DataError, scan_eval, scan_train

# the config's `crop`: whole image, centre crop, cached face crop (whichever `crop_detector` found the face)
CROP_MODES = ("none", "center", "faces")
# the longer side of the copy a face is detected on: a 12000-pixel photo would take gigabytes in MTCNN's pyramid;
# the competition's and most camera photos are within it, so their boxes are those of the image itself
DETECT_MAX_SIDE = 2048
# x1..y2: the face box found (may run past the image edge), empty when none was (fallback: the centre crop)
MANIFEST_COLUMNS = ("path", "split", "x1", "y1", "x2", "y2", "prob", "fallback", "pass", "source_hash",
                    "settings_hash")
_SAVE_EVERY_S = 10.0  # manifest rewrite interval during a run; a hard kill loses at most this much work


# ------------------------------------------------------------------------------------------------- cache

def default_cache_dir(data_dir: str | Path) -> Path:
    """``<data_dir parent>/.maskcls_cache/<data_dir name>``: beside the dataset, never inside it.

    Where that parent is read-only (a shared dataset), the user's cache folder instead:
    ``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/maskcls/<data_dir name>-<hash of its path>``.
    """
    data_dir = Path(data_dir).resolve()
    beside = data_dir.parent / ".maskcls_cache" / data_dir.name
    if _writable(beside):
        return beside
    return user_cache_dir() / f"{data_dir.name}-{hashlib.sha1(str(data_dir).encode()).hexdigest()[:8]}"


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/maskcls`` (``~/.cache/maskcls`` without it): what maskcls makes outside any project."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "maskcls"


def _writable(folder: Path) -> bool:
    """Whether ``folder`` can be written, or created under its nearest existing parent. A folder with no
    write bit counts as read-only even for root, who could write it anyway: its owner made it so."""
    while not folder.exists():
        if folder.parent == folder:
            return False
        folder = folder.parent
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def resolve_cache_dir(data_dir: str | Path, cache_dir: str | Path | None = None) -> Path:
    cache = Path(cache_dir).resolve() if cache_dir else default_cache_dir(data_dir)
    for images_dir in (Path(data_dir).resolve() / "train" / "images", Path(data_dir).resolve() / "eval" / "images"):
        if cache == images_dir or images_dir in cache.parents:
            raise DataError(f"{cache}: the crop cache must not be inside the dataset's image folder {images_dir}")
    return cache


def detections_dir(cache_dir: Path, settings: CropSettings) -> Path:
    """The folder of the manifest of ``settings.detector``'s boxes: the cache folder itself for MTCNN (where its
    boxes were before there was a second detector), a subfolder named after any other. A manifest holds one box
    per image, so two detectors sharing one would each redo the other's boxes on every switch."""
    return cache_dir if settings.detector == "mtcnn" else cache_dir / settings.detector


def file_hash(path: str | Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def _key(path: str | Path, data_dir: str | Path) -> str | None:
    """The manifest key of a source image: its path relative to ``data_dir``, or None when outside it."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(data_dir))  # abspath: no per-file syscalls
    return None if rel.startswith("..") else Path(rel).as_posix()


def read_manifest(cache_dir: Path) -> dict[str, dict]:
    """path -> manifest row; empty when there is no manifest yet."""
    path = Path(cache_dir) / "manifest.csv"
    if not path.is_file():
        return {}
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        message = str(err).splitlines()[0]
        raise DataError(f"{path}: cannot be read as CSV ({message}); delete it to redo the crops") from None
    missing = [c for c in MANIFEST_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; delete it to redo the crops")
    return {row["path"]: row for row in table.to_dict("records")}


def _write_manifest(cache_dir: Path, entries: dict[str, dict]) -> None:
    atomic_write_csv(Path(cache_dir) / "manifest.csv", pd.DataFrame(list(entries.values()), columns=MANIFEST_COLUMNS))


def _valid(entry: dict | None, source_hash: str, settings_hash: str) -> bool:
    return entry is not None and entry["settings_hash"] == settings_hash and entry["source_hash"] == source_hash


def entry_face(entry: dict) -> Face | None:
    """The face of a manifest row (None where none was found)."""
    if _flag(entry["fallback"]):
        return None
    return Face(tuple(float(entry[k]) for k in ("x1", "y1", "x2", "y2")), float(entry["prob"] or 0))


# ------------------------------------------------------------------------------------------------ loader

class ImageLoader:
    """Source image path -> RGB image as ``config.crop`` says. Picklable: DataLoader workers get a copy
    and each builds its own detectors (CPU) on first need."""

    def __init__(self, mode: str, settings: CropSettings, data_dir: str | Path, cache_dir: str | Path | None):
        if mode not in CROP_MODES:
            raise ConfigError(f"crop={mode!r}: expected one of {', '.join(CROP_MODES)}")
        self.mode, self.settings, self.data_dir = mode, settings, str(data_dir)
        cache = detections_dir(resolve_cache_dir(data_dir, cache_dir), settings) if mode == "faces" else ""
        self.cache_dir = str(cache)
        self.settings_hash = settings.digest()  # once: every image's cache entry is checked against it
        self._entries: dict | None = None
        self._detectors: list | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_entries": None, "_detectors": None}

    def __call__(self, path: str | Path) -> Image.Image:
        image = open_rgb(path)
        if self.mode == "none":
            return image
        if self.mode == "center":
            return image.crop(center_box(image.size, self.settings.fallback))
        entry = self._cached(path)
        if entry is not None:
            face = entry_face(entry)
        else:
            if self._detectors is None:
                self._detectors = create_detectors(self.settings, device="cpu")
            # a large image is read again, as run_crop reads it, so that both detect on the same pixels
            copy, size = (image, image.size) if max(image.size) <= DETECT_MAX_SIDE else \
                open_bounded(path, DETECT_MAX_SIDE)
            face = pick_faces_on_copies([copy], [size], self.settings, self._detectors)[0][0]
        return image.crop(crop_box(face, image.size, self.settings))

    def _cached(self, path) -> dict | None:
        """The valid manifest row of ``path`` (the file has decoded already), or None."""
        if self._entries is None:
            self._entries = read_manifest(Path(self.cache_dir))
        key = _key(path, self.data_dir)
        entry = self._entries.get(key) if key else None
        if entry is None or entry["settings_hash"] != self.settings_hash:  # no need to hash the source
            return None
        try:
            return entry if _valid(entry, file_hash(path), self.settings_hash) else None
        except OSError:
            return None


# An extra_data folder holds face photos, often aligned crops whose face fills the frame (UTKFace's span
# 0.75-1.0 of the side, and MTCNN's box may run past it): there a face may span the whole image.
EXTRA_MAX_FACE_FRACTION = 1.25


def folder_settings(settings: CropSettings, data_dir: str | Path) -> CropSettings:
    """``settings`` for the images of ``data_dir``: as they are for a dataset, with the face-size cap lifted for
    an extra_data folder (else every face of a tight crop is refused and the centre fallback cuts it)."""
    if not is_extra_folder(data_dir):
        return settings
    return dataclasses.replace(settings, max_face_fraction=max(settings.max_face_fraction, EXTRA_MAX_FACE_FRACTION))


def build_image_loader(config) -> Callable[[str], Image.Image]:
    """The image reader for training and submission: ``none``, ``center`` or cached face (``faces``) crops."""
    settings = folder_settings(CropSettings.from_config(config), config.data_dir)
    return ImageLoader(config.crop, settings, config.data_dir, config.crop_cache or None)


class RoutedImageLoader:
    """Image path -> RGB image through the loader of the folder holding it: the dataset's, or an extra
    folder's (each with its own crop cache). Picklable, as each loader is."""

    def __init__(self, main: Callable, extra: dict[str, Callable]):
        self.main = main
        self.extra = {str(Path(folder).resolve()): loader for folder, loader in extra.items()}

    def __call__(self, path):
        resolved = Path(path).resolve()
        for folder, loader in self.extra.items():
            if resolved.is_relative_to(folder):
                return loader(path)
        return self.main(path)


def build_train_image_loader(config) -> Callable:
    """build_image_loader for the dataset, plus one per extra folder (cache beside each folder)."""
    main = build_image_loader(config)
    if not config.extra_data:
        return main
    return RoutedImageLoader(main, {folder: build_image_loader(dataclasses.replace(config, data_dir=folder,
                                                                                   crop_cache=""))
                                    for folder in config.extra_data})


def fill_crop_caches(config, device=None) -> list[str]:
    """The faces a training of ``config`` reads (its dataset's train images, every extra_data folder's) detected
    into their crop caches where a cache lacks them (``run_crop``, with progress bars), so that this run and
    every later one, ensemble member and CV fold read them instead of detecting each image again. A cache
    folder that cannot be written gets a warning line instead (the run then detects on the fly). Returns the
    lines to print."""
    if config.crop != "faces":
        return []
    lines = []
    for folder, cache_dir in [(config.data_dir, config.crop_cache or None), *((f, None) for f in config.extra_data)]:
        settings = folder_settings(CropSettings.from_config(config), folder)
        cache = detections_dir(resolve_cache_dir(folder, cache_dir), settings)
        try:
            if _holds_every_face(cache, folder, settings.digest()):
                continue
        except DataError:  # no images there: reading the data names the problem
            continue
        try:
            if not _writable(cache):
                raise PermissionError(errno.EACCES, "read-only")
            summary = run_crop(folder, settings, cache_dir=cache_dir, device=device, sheet=False, splits=("train",))
        except OSError as err:
            lines.append(f"warning: crop cache {cache} cannot be written ({err.strerror or err}); faces are "
                         f"detected on the fly, in every run")
            continue
        lines.append(f"crops: {summary.cropped_now} image(s) of {folder} detected now, into {summary.cache_dir}")
    return lines


def _holds_every_face(cache: Path, folder: str | Path, settings_hash: str) -> bool:
    """Whether the manifest has an entry of these settings for every train image of ``folder`` (not checking
    the files' hashes: the loader does, and detects a changed image again)."""
    entries = read_manifest(cache)
    keys = [_key(path, folder) for _, path in dataset_images(folder, ("train",))]
    return all(key in entries and entries[key]["settings_hash"] == settings_hash for key in keys)


# ------------------------------------------------------------------------------------------------ run_crop

@dataclass
class CropSummary:
    cache_dir: Path
    images: dict[str, int] = field(default_factory=dict)  # split -> images with a crop
    detected: dict[str, int] = field(default_factory=dict)  # split -> images where a face was found
    by_pass: dict[int, int] = field(default_factory=dict)  # detector pass -> faces it found
    bad: list[str] = field(default_factory=list)  # one message per image that did not decode
    cropped_now: int = 0  # crops computed by this run (the rest came from the cache)
    detect_seconds: float = 0.0
    seconds: float = 0.0
    sheet: Path | None = None

    @property
    def fallbacks(self) -> int:
        return sum(self.images.values()) - sum(self.detected.values())

    def format(self) -> str:
        lines = [f"{split}: {self.detected[split]}/{n} faces detected ({self.detected[split] / n:.1%})"
                 for split, n in self.images.items() if n]
        rate = f", {self.cropped_now / self.detect_seconds:.1f} images/s" if self.detect_seconds else ""
        lines += [f"faces found by pass: {', '.join(f'{k}: {v}' for k, v in sorted(self.by_pass.items()))}",
                  f"fallbacks (centre crop): {self.fallbacks}",
                  f"bad images skipped: {len(self.bad)}",
                  f"cropped now: {self.cropped_now}, from cache: {sum(self.images.values()) - self.cropped_now}{rate}",
                  f"time: {self.seconds:.1f} s; cache: {self.cache_dir}"]
        return "\n".join(lines)


def dataset_images(data_dir: str | Path, splits: Sequence[str] = ("train", "eval")) -> list[tuple[str, str]]:
    """(split, path) of every image file of ``splits`` found (every image of an extra_data folder), layout
    problems aside."""
    data_dir = Path(data_dir)
    items = []
    if is_extra_folder(data_dir):  # an extra_data folder: images/ + labels.csv
        items += [(EXTRA_SPLIT, p) for p in scan_extra(data_dir)[0]["path"]]
    if "train" in splits and (data_dir / "train").exists():
        items += [("train", p) for p in scan_train(data_dir)[0]["path"]]
    if "eval" in splits and (data_dir / "eval").exists():
        items += [("eval", p) for p in scan_eval(data_dir)[0]["path"] if Path(p).is_file()]
    if not items:
        raise DataError(f"{data_dir}: no {' or '.join(splits)} images found")
    return items


def _load(path: str) -> tuple[Image.Image, tuple[int, int]] | DataError:
    """(the copy to detect on, the size of the image itself), or the error naming the file."""
    try:
        return open_bounded(path, DETECT_MAX_SIDE)
    except DataError as err:
        return err


def pick_faces_on_copies(copies: list[Image.Image], sizes: list[tuple[int, int]], settings: CropSettings,
              detectors) -> list[tuple[Face | None, int]]:
    """``pick_faces`` on detection copies, each face in the pixels of its image (of ``sizes``), rounded as the
    manifest keeps it: a face detected on the fly is the face a cache holds."""
    found = []
    for (face, found_by), copy, size in zip(pick_faces(copies, settings, detectors), copies, sizes):
        if face is not None and copy.size != size:
            face = face_in_image(face, "image", size, copy.size)
        found.append((_stored(face), found_by))
    return found


def _stored(face: Face | None) -> Face | None:
    """``face`` as a manifest row keeps it (box to 0.01 pixel, probability to 4 places)."""
    return None if face is None else Face(tuple(round(v, 2) for v in face.box), round(face.prob, 4))


def _hash_or_error(path: str) -> str | DataError:
    try:
        return file_hash(path)
    except OSError as err:
        return DataError(f"{path}: cannot be read ({err.strerror or err})")


def run_crop(data_dir: str | Path, config_or_settings=None, cache_dir: str | Path | None = None, batch_size: int = 32,
             device=None, sheet: str | Path | None | bool = None, sheet_size: int = 120, detectors=None,
             show_progress: bool = True, splits: Sequence[str] = ("train", "eval")) -> CropSummary:
    """Crop every image of ``splits`` into the cache; keep valid entries; resume where a run stopped.

    ``config_or_settings``: a Config (crop_detector, crop_margin, crop_fallback, crop_cache) or CropSettings.
    ``sheet``: contact sheet PNG path (default ``<cache>/contact_sheet.png``; False: none).
    ``detectors``: objects with MTCNN's ``detect`` tried in turn (default: one per pass of the settings).
    """
    from ..progress import progress

    started = time.perf_counter()
    settings = config_or_settings if isinstance(config_or_settings, CropSettings) else (
        CropSettings() if config_or_settings is None else CropSettings.from_config(config_or_settings))
    settings = folder_settings(settings, data_dir)
    if cache_dir is None and hasattr(config_or_settings, "crop_cache"):
        cache_dir = config_or_settings.crop_cache or None
    cache = detections_dir(resolve_cache_dir(data_dir, cache_dir), settings)
    settings_hash = settings.digest()
    items = dataset_images(data_dir, splits)
    keys = [_key(path, data_dir) for _, path in items]
    entries = read_manifest(cache)
    summary = CropSummary(cache)
    bar = {} if show_progress else {"disable": True}

    with ThreadPoolExecutor(2) as pool:  # file reads and PNG decodes release the GIL
        hashes = list(progress(pool.map(_hash_or_error, [p for _, p in items]), total=len(items), desc="hash", **bar))
        todo, keep = [], {}
        for (split, path), key, source_hash in zip(items, keys, hashes):
            if isinstance(source_hash, DataError):
                summary.bad.append(str(source_hash))
            elif _valid(entries.get(key), source_hash, settings_hash):
                keep[key] = entries[key]
            else:
                todo.append((split, path, key, source_hash))
        # entries of images no longer in the dataset are dropped (those of other splits kept); stale ones stay
        # until redone
        present = set(keys)
        entries = {**{k: v for k, v in entries.items() if k in present or v["split"] not in splits}, **keep}
        if todo and detectors is None:
            detectors = create_detectors(settings, device)

        chunks = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
        last_save = time.monotonic()
        next_images = pool.map(_load, [item[1] for item in chunks[0]]) if chunks else None
        try:
            with progress(total=len(todo), desc="crop", unit="img", **bar) as bar_crop:
                for index, chunk in enumerate(chunks):
                    loaded = list(next_images)
                    if index + 1 < len(chunks):  # decode the next batch while this one is detected
                        next_images = pool.map(_load, [item[1] for item in chunks[index + 1]])
                    good = [(item, image) for item, image in zip(chunk, loaded) if not isinstance(image, DataError)]
                    summary.bad += [str(image) for image in loaded if isinstance(image, DataError)]
                    tick = time.perf_counter()
                    copies, sizes = [copy for _, (copy, _) in good], [size for _, (_, size) in good]
                    faces = pick_faces_on_copies(copies, sizes, settings, detectors) if good else []
                    summary.detect_seconds += time.perf_counter() - tick
                    for ((split, path, key, source_hash), image), (face, found_by) in zip(good, faces):
                        entries[key] = _manifest_row(face, found_by, split, key, source_hash, settings_hash)
                        summary.cropped_now += 1
                    bar_crop.update(len(chunk))
                    if time.monotonic() - last_save > _SAVE_EVERY_S:
                        _write_manifest(cache, entries)
                        last_save = time.monotonic()
        finally:  # an interrupted run keeps every crop it wrote
            _write_manifest(cache, entries)

    current = [entries[k] for k in keys if k in entries and entries[k]["settings_hash"] == settings_hash]
    for split in dict.fromkeys(split for split, _ in items):
        rows = [e for e in current if e["split"] == split]
        summary.images[split] = len(rows)
        summary.detected[split] = sum(not _flag(e["fallback"]) for e in rows)
    for entry in current:
        if not _flag(entry["fallback"]):
            summary.by_pass[int(entry["pass"])] = summary.by_pass.get(int(entry["pass"]), 0) + 1
    if sheet is not False:
        summary.sheet = write_contact_sheet(data_dir, current, settings,
                                            Path(sheet) if sheet else cache / "contact_sheet.png", limit=sheet_size)
    summary.seconds = time.perf_counter() - started
    return summary


def _flag(value) -> bool:
    return str(value).lower() in ("true", "1")


def _manifest_row(face: Face | None, found_by: int, split: str, key: str, source_hash: str,
                  settings_hash: str) -> dict:
    face = _stored(face)
    box = ("", "", "", "") if face is None else face.box
    return {"path": key, "split": split, "x1": box[0], "y1": box[1], "x2": box[2], "y2": box[3],
            "prob": "" if face is None else face.prob, "fallback": face is None,
            "pass": found_by, "source_hash": source_hash, "settings_hash": settings_hash}


def write_contact_sheet(data_dir: str | Path, entries: list[dict], settings: CropSettings, path: Path,
                        limit: int = 120, seed: int = 0) -> Path:
    """Every fallback (up to half of ``limit``), then a random sample of detected crops, cut with ``settings``."""
    from ..plots import save_contact_sheet

    fallbacks = [e for e in entries if _flag(e["fallback"])]
    detected = [e for e in entries if not _flag(e["fallback"])]
    rng = random.Random(seed)
    chosen = rng.sample(fallbacks, min(len(fallbacks), limit // 2))
    chosen += rng.sample(detected, min(len(detected), limit - len(chosen)))
    images, captions = [], []
    for entry in chosen:
        image = open_rgb(Path(data_dir) / entry["path"])
        images.append(image.crop(crop_box(entry_face(entry), image.size, settings)))
        detected_caption = f"pass {entry['pass']} p={float(entry['prob'] or 0):.2f}"
        captions.append("fallback" if _flag(entry["fallback"]) else detected_caption)
    flagged = [_flag(e["fallback"]) for e in chosen]
    title = f"{len(detected)} detected, {len(fallbacks)} fallbacks (red frame); showing {len(chosen)}"
    return save_contact_sheet(images, captions, path, flagged=flagged, title=title)
