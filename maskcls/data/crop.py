"""Face crops: MTCNN finds the face, a margin grows its box, a centre crop stands in when none is found.

The competition photos are upper-body shots; the strong entries cropped the face first with
facenet-pytorch's MTCNN and fell back to a centre crop. ``run_crop`` does it once for a whole dataset
into a cache folder (crops as PNG + ``manifest.csv``); ``build_image_loader`` reads that cache and
crops on the fly, with the same code, where the cache has no valid entry.

Cache validity: an entry is used only when the source file's SHA-1 and the crop settings' hash both
match, so a changed image or setting is redone and everything else is kept.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from ..io import atomic_path, atomic_write_csv
from .images import open_rgb
from .layout import DataError, scan_eval, scan_train

CROP_VERSION = 2  # bump when the crop code changes what it writes: every cached crop is then redone
MANIFEST_COLUMNS = ("path", "split", "crop", "x1", "y1", "x2", "y2", "prob", "fallback", "pass", "source_hash",
                    "settings_hash")
_SAVE_EVERY_S = 10.0  # manifest rewrite interval during a run; a hard kill loses at most this much work


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels; may run past the image edge
    prob: float
    landmarks: tuple[tuple[float, float], ...] | None = None  # eyes, nose, mouth corners as (x, y)

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


VIEWS = ("image", "mirror", "equalize", "equalize_mirror", "half", "up")


@dataclass(frozen=True)
class DetectPass:
    """One MTCNN pass: its P-, R- and O-net thresholds and the view of the image it looks at.

    Views: ``image`` as is, ``mirror`` flipped left-right, ``equalize`` grey with its histogram
    equalised, ``equalize_mirror`` both, ``half`` at half size, ``up`` at 1.5 x. MTCNN is not
    mirror-symmetric and its pyramid samples each size differently, so each view finds masked faces the
    others miss; boxes are mapped back to the image.
    """

    thresholds: tuple[float, float, float]
    view: str = "image"

    def __post_init__(self):
        if self.view not in VIEWS:
            raise ValueError(f"detection view {self.view!r}: expected one of {', '.join(VIEWS)}")


DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)  # facenet-pytorch's
LOOSE = (0.4, 0.2, 0.3)
LOOSER = (0.3, 0.05, 0.05)


@dataclass(frozen=True)
class CropSettings:
    """Everything that decides a crop; its ``digest`` keys the cache."""

    margin: float = 0.25  # the face box grows by this fraction of its width/height on every side
    fallback: float = 0.6  # centre crop of this fraction of the image when no face is found
    # A later pass runs only on images still without a face. facenet-pytorch's defaults first; masks hide
    # the nose and mouth that R- and O-net look for, and the first pass misses about a third of the
    # masked faces of ../shared/data/faces. Looser thresholds on other views of the image find most of
    # the rest (see docs/benchmarks.md); their boxes are rougher, the manifest's `pass` column tells them
    # apart. The size bounds below keep eye-sized boxes and the blurred background out.
    passes: tuple[DetectPass, ...] = (
        DetectPass(DEFAULT_THRESHOLDS), DetectPass(LOOSE, "half"), DetectPass(LOOSE, "mirror"),
        DetectPass(LOOSE, "equalize"), DetectPass(LOOSE), DetectPass(LOOSER, "half"), DetectPass(LOOSER, "equalize"),
        DetectPass(LOOSER, "equalize_mirror"), DetectPass(LOOSER, "mirror"), DetectPass(LOOSER), DetectPass(LOOSE, "up"))
    min_face_size: int = 20  # pixels: the smallest face MTCNN's image pyramid looks for
    # a face to crop spans at least this fraction of the shorter image side: drops the eye- or
    # cheek-sized boxes that loose thresholds let through (faces in upper-body shots span 0.3-0.5)
    min_face_fraction: float = 0.2
    # ... and at most this fraction of it: drops whole-head and background boxes of the loose passes
    max_face_fraction: float = 0.8
    pad: float = 0.1  # border added before detection, as a fraction of the longer side (see detect_faces)

    @classmethod
    def from_config(cls, config) -> CropSettings:
        return cls(margin=config.crop_margin, fallback=config.crop_fallback)

    def digest(self) -> str:
        text = json.dumps({"version": CROP_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------- detection

def create_detector(thresholds: Sequence[float] = (0.6, 0.7, 0.7), min_face_size: int = 20, device=None):
    """facenet-pytorch's MTCNN returning every face (its wheel ships the weights; nothing downloads)."""
    import torch
    from facenet_pytorch import MTCNN

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return MTCNN(keep_all=True, select_largest=False, thresholds=list(thresholds), min_face_size=min_face_size,
                 device=device)


def create_detectors(settings: CropSettings = CropSettings(), device=None) -> list:
    """One detector per pass of ``settings``."""
    return [create_detector(p.thresholds, settings.min_face_size, device) for p in settings.passes]


_DEFAULT_DETECTORS: dict = {}


def _default_detector():
    if "default" not in _DEFAULT_DETECTORS:  # once per process: building MTCNN loads three nets
        _DEFAULT_DETECTORS["default"] = create_detector()
    return _DEFAULT_DETECTORS["default"]


def detect_faces(images: list[Image.Image], detector=None, min_prob: float = 0.0,
                 pad: float = CropSettings.pad) -> list[list[Face]]:
    """Every face in each image, most confident first (the larger first when tied).

    facenet-pytorch 2.5.3 clips a candidate box at the image edge before resampling it for R- and
    O-net, so a face that runs past the edge comes back with a stretched box and landmarks. Each image
    gets a mid-grey border (``pad`` x its longer side; 127 is MTCNN's zero after normalisation) before
    detection, and the boxes are shifted back. Images of one size are detected as one batch.
    """
    detector = detector or _default_detector()
    faces: list[list[Face]] = [[] for _ in images]
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        by_size.setdefault(image.size, []).append(index)
    for (width, height), indices in by_size.items():
        border = int(round(pad * max(width, height)))
        batch = np.stack([np.pad(np.asarray(images[i].convert("RGB")), ((border, border), (border, border), (0, 0)),
                                 constant_values=127) for i in indices])
        boxes, probs, points = detector.detect(batch, landmarks=True)
        for i, image_boxes, image_probs, image_points in zip(indices, boxes, probs, points):
            if image_boxes is None:
                continue
            found = [Face(tuple(float(v) - border for v in box[:4]), float(prob),
                          tuple((float(x) - border, float(y) - border) for x, y in marks))
                     for box, prob, marks in zip(image_boxes, image_probs, image_points)]
            faces[i] = sorted((f for f in found if f.prob >= min_prob), key=lambda f: (-f.prob, -f.area))
    return faces


def view_image(image: Image.Image, view: str) -> Image.Image:
    """``image`` as a detection pass sees it (see DetectPass)."""
    if view in ("equalize", "equalize_mirror"):
        image = ImageOps.equalize(ImageOps.grayscale(image)).convert("RGB")
    if view in ("mirror", "equalize_mirror"):
        return ImageOps.mirror(image)
    if view in ("half", "up"):
        scale = 0.5 if view == "half" else 1.5
        return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
    return image


def face_in_image(face: Face, view: str, image_size: tuple[int, int], view_size: tuple[int, int]) -> Face:
    """A face found in ``view_image(image, view)`` in the coordinates of the image itself."""
    sx, sy = image_size[0] / view_size[0], image_size[1] / view_size[1]

    def point(x: float, y: float) -> tuple[float, float]:
        return ((view_size[0] - x) if view.endswith("mirror") else x) * sx, y * sy

    (x1, y1), (x2, y2) = point(face.box[0], face.box[1]), point(face.box[2], face.box[3])
    marks = tuple(point(x, y) for x, y in face.landmarks) if face.landmarks else face.landmarks
    return Face((min(x1, x2), y1, max(x1, x2), y2), face.prob, marks)


def pick_faces(images: list[Image.Image], settings: CropSettings,
               detectors: Sequence) -> list[tuple[Face | None, int]]:
    """(face to crop or None, 1-based pass that found it or 0) per image: each detector in turn runs on
    its pass's view of the images still without a face; the most confident face of a face's size wins."""
    picked: list[Face | None] = [None] * len(images)
    found_by = [0] * len(images)
    for number, detector in enumerate(detectors, start=1):
        view = settings.passes[number - 1].view if number <= len(settings.passes) else "image"
        todo = [i for i, face in enumerate(picked) if face is None]
        if not todo:
            break
        views = [view_image(images[i], view) for i in todo]
        for i, seen, faces in zip(todo, views, detect_faces(views, detector, pad=settings.pad)):
            side = min(images[i].size)
            for face in (face_in_image(f, view, images[i].size, seen.size) for f in faces):
                if settings.min_face_fraction <= _face_side(face) / side <= settings.max_face_fraction:
                    picked[i], found_by[i] = face, number
                    break
    return list(zip(picked, found_by))


def _face_side(face: Face) -> float:
    return min(face.box[2] - face.box[0], face.box[3] - face.box[1])


# ------------------------------------------------------------------------------------------- box arithmetic

def expand_box(box: Sequence[float], image_size: tuple[int, int], margin: float) -> tuple[int, int, int, int]:
    """``box`` grown by ``margin`` x its width/height on every side, rounded outwards, clipped to the image."""
    width, height = image_size
    x1, y1, x2, y2 = box
    dx, dy = margin * (x2 - x1), margin * (y2 - y1)
    left, top = max(0, math.floor(x1 - dx)), max(0, math.floor(y1 - dy))
    right, bottom = min(width, math.ceil(x2 + dx)), min(height, math.ceil(y2 + dy))
    if right <= left or bottom <= top:
        raise ValueError(f"box {tuple(box)} lies outside the {width}x{height} image")
    return left, top, right, bottom


def center_box(image_size: tuple[int, int], fraction: float) -> tuple[int, int, int, int]:
    """The centred box of ``fraction`` x the image's width and height (at least one pixel)."""
    width, height = image_size
    crop_w, crop_h = max(1, round(width * fraction)), max(1, round(height * fraction))
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


def crop_box(face: Face | None, image_size: tuple[int, int], settings: CropSettings) -> tuple[int, int, int, int]:
    if face is None:
        return center_box(image_size, settings.fallback)
    return expand_box(face.box, image_size, settings.margin)


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
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return user_cache / "maskcls" / f"{data_dir.name}-{hashlib.sha1(str(data_dir).encode()).hexdigest()[:8]}"


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


def _valid(entry: dict | None, source_hash: str, settings_hash: str, cache_dir: Path) -> bool:
    return (entry is not None and entry["settings_hash"] == settings_hash and entry["source_hash"] == source_hash
            and (cache_dir / entry["crop"]).is_file())


# ------------------------------------------------------------------------------------------------ loader

class ImageLoader:
    """Source image path -> RGB image as ``config.crop`` says. Picklable: DataLoader workers get a copy
    and each builds its own MTCNN (CPU) on first need."""

    def __init__(self, mode: str, settings: CropSettings, data_dir: str | Path, cache_dir: str | Path | None):
        if mode not in ("none", "center", "mtcnn"):
            raise ValueError(f"crop={mode!r}: expected one of none, center, mtcnn")
        self.mode, self.settings, self.data_dir = mode, settings, str(data_dir)
        self.cache_dir = str(resolve_cache_dir(data_dir, cache_dir)) if mode == "mtcnn" else ""
        self.settings_hash = settings.digest()  # once: every image's cache entry is checked against it
        self._entries: dict | None = None
        self._detectors: list | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_entries": None, "_detectors": None}

    def __call__(self, path: str | Path) -> Image.Image:
        if self.mode == "none":
            return open_rgb(path)
        if self.mode == "center":
            image = open_rgb(path)
            return image.crop(center_box(image.size, self.settings.fallback))
        cached = self._cached(path)
        if cached is not None:
            return cached
        image = open_rgb(path)
        if self._detectors is None:
            self._detectors = create_detectors(self.settings, device="cpu")
        face, _ = pick_faces([image], self.settings, self._detectors)[0]
        return image.crop(crop_box(face, image.size, self.settings))

    def _cached(self, path) -> Image.Image | None:
        if self._entries is None:
            self._entries = read_manifest(Path(self.cache_dir))
        key = _key(path, self.data_dir)
        entry = self._entries.get(key) if key else None
        if entry is None or entry["settings_hash"] != self.settings_hash:  # no need to hash the source
            return None
        try:
            if not _valid(entry, file_hash(path), self.settings_hash, Path(self.cache_dir)):
                return None
            return open_rgb(Path(self.cache_dir) / entry["crop"])
        except (OSError, DataError):  # source missing or crop unreadable: crop from the source, which names the file
            return None


def build_image_loader(config) -> Callable[[str], Image.Image]:
    """The image reader for training and submission: ``none``, ``center`` or cached ``mtcnn`` crops."""
    return ImageLoader(config.crop, CropSettings.from_config(config), config.data_dir, config.crop_cache or None)


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


def dataset_images(data_dir: str | Path) -> list[tuple[str, str]]:
    """(split, path) of every train and eval image file found, layout problems aside."""
    from .extra import EXTRA_SPLIT, is_extra_folder, scan_extra

    data_dir = Path(data_dir)
    items = []
    if is_extra_folder(data_dir):  # an extra_data folder: images/ + labels.csv
        items += [(EXTRA_SPLIT, p) for p in scan_extra(data_dir)[0]["path"]]
    if (data_dir / "train").exists():
        items += [("train", p) for p in scan_train(data_dir)[0]["path"]]
    if (data_dir / "eval").exists():
        items += [("eval", p) for p in scan_eval(data_dir)[0]["path"] if Path(p).is_file()]
    if not items:
        raise DataError(f"{data_dir}: no train or eval images found")
    return items


def _load(path: str) -> Image.Image | DataError:
    try:
        return open_rgb(path)
    except DataError as err:
        return err


def _hash_or_error(path: str) -> str | DataError:
    try:
        return file_hash(path)
    except OSError as err:
        return DataError(f"{path}: cannot be read ({err.strerror or err})")


def run_crop(data_dir: str | Path, config_or_settings=None, cache_dir: str | Path | None = None, batch_size: int = 32,
             device=None, sheet: str | Path | None | bool = None, sheet_size: int = 120, detectors=None,
             show_progress: bool = True) -> CropSummary:
    """Crop every train and eval image into the cache; keep valid entries; resume where a run stopped.

    ``config_or_settings``: a Config (crop_margin, crop_fallback, crop_cache) or CropSettings.
    ``sheet``: contact sheet PNG path (default ``<cache>/contact_sheet.png``; False: none).
    ``detectors``: MTCNN-like objects tried in turn (default: one per pass of the settings).
    """
    from ..progress import progress

    started = time.perf_counter()
    settings = config_or_settings if isinstance(config_or_settings, CropSettings) else (
        CropSettings() if config_or_settings is None else CropSettings.from_config(config_or_settings))
    if cache_dir is None and hasattr(config_or_settings, "crop_cache"):
        cache_dir = config_or_settings.crop_cache or None
    cache = resolve_cache_dir(data_dir, cache_dir)
    settings_hash = settings.digest()
    items = dataset_images(data_dir)
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
            elif _valid(entries.get(key), source_hash, settings_hash, cache):
                keep[key] = entries[key]
            else:
                todo.append((split, path, key, source_hash))
        # entries of images no longer in the dataset are dropped; stale ones stay until redone
        present = set(keys)
        entries = {**{k: v for k, v in entries.items() if k in present}, **keep}
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
                    faces = pick_faces([image for _, image in good], settings, detectors) if good else []
                    summary.detect_seconds += time.perf_counter() - tick
                    for ((split, path, key, source_hash), image), (face, found_by) in zip(good, faces):
                        entries[key] = _save_crop(image, face, found_by, settings, cache, split, key, source_hash,
                                                  settings_hash)
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
        summary.sheet = write_contact_sheet(cache, current, Path(sheet) if sheet else cache / "contact_sheet.png",
                                            limit=sheet_size)
    summary.seconds = time.perf_counter() - started
    return summary


def _flag(value) -> bool:
    return str(value).lower() in ("true", "1")


def _save_crop(image: Image.Image, face: Face | None, found_by: int, settings: CropSettings, cache: Path,
               split: str, key: str, source_hash: str, settings_hash: str) -> dict:
    box = crop_box(face, image.size, settings)
    crop_rel = f"crops/{key}.png"  # keeps the source suffix: mask1.jpg and mask1.png never collide
    with atomic_path(cache / crop_rel) as tmp:
        image.crop(box).save(tmp, format="PNG")
    return {"path": key, "split": split, "crop": crop_rel, "x1": box[0], "y1": box[1], "x2": box[2], "y2": box[3],
            "prob": "" if face is None else round(face.prob, 4), "fallback": face is None,
            "pass": found_by, "source_hash": source_hash, "settings_hash": settings_hash}


def write_contact_sheet(cache: Path, entries: list[dict], path: Path, limit: int = 120, seed: int = 0) -> Path:
    """Every fallback (up to half of ``limit``), then a random sample of detected crops."""
    from ..plots import save_contact_sheet

    fallbacks = [e for e in entries if _flag(e["fallback"])]
    detected = [e for e in entries if not _flag(e["fallback"])]
    rng = random.Random(seed)
    chosen = rng.sample(fallbacks, min(len(fallbacks), limit // 2))
    chosen += rng.sample(detected, min(len(detected), limit - len(chosen)))
    images, captions = [], []
    for entry in chosen:
        with Image.open(cache / entry["crop"]) as image:
            images.append(image.convert("RGB"))
        detected_caption = f"pass {entry['pass']} p={float(entry['prob'] or 0):.2f}"
        captions.append("fallback" if _flag(entry["fallback"]) else detected_caption)
    flagged = [_flag(e["fallback"]) for e in chosen]
    title = f"{len(detected)} detected, {len(fallbacks)} fallbacks (red frame); showing {len(chosen)}"
    return save_contact_sheet(images, captions, path, flagged=flagged, title=title)
