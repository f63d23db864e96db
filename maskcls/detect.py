"""Faces in any photo: RetinaFace (or MTCNN, ``DetectSettings.detector``) finds every face, each is cropped as
training cropped, the three specialists classify it, and every face becomes one row; ``annotate`` draws the
boxes and labels onto the photo.

A face is always cut out before it is classified, whatever a run's ``crop`` setting: the detector's box grown by
the run's ``crop_margin`` (squared first if ``crop_square``) and clipped to the photo (``faces.crop_box``, the
code that cut the training crops). The crop cache's face-size bounds (a fraction of a portrait's side) do not
apply: a small face in a group photo gets its row.
A run trained on whole or centre-cropped photos (``crop: none`` / ``center``) therefore sees a tighter framing
than it trained on, but a group photo is never fed to a classifier whole.

Rows: ``file``, ``status`` (``face``, or ``no_face`` for a readable photo without one: one row with the face
fields empty), ``face`` (1, 2, ... left to right), the box ``x1 y1 x2 y2`` (the detector's, clipped to the photo),
``det_prob``, ``mask`` ``gender`` ``age`` with ``*_prob`` (the chosen class's probability), the 18-class
``label`` (argmax per task, ``mask*6 + gender*3 + age``; no tuned bias) and its ``class`` name; ``age_years``
is the expected age when the age runs have ``age_target: years`` (maskcls.years), else empty. Unreadable
files get no row; they are listed in the note.
"""
from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import numpy as np
import pandas as pd
from PIL import ExifTags, Image, ImageDraw, ImageFont
from torch import nn

from .data.dataset import build_dataset
from .data.faces import (DEFAULT_THRESHOLDS, DETECTORS, LOOSE, RETINAFACE_SCORE, CropSettings, Face, RetinaFace,
                         create_detector, crop_box, detect_faces, face_in_image)
from .data.images import PHOTO_SUFFIXES, bounded_size, open_rgb, reduce_jpeg
from .data.labels import class_name, encode
from .data.layout import DataError
from .engine import Engine, pick_device
from .errors import ConfigError
from .io import atomic_path, atomic_write_text, note_path
from .infer import Prediction, Run, build_views, inference_engine, inference_model, load_run, predict, tta_views
from .tasks import SPECIALISTS, get_task
from .years import AGE_COLUMN

COLUMNS = ("file", "status", "face", "x1", "y1", "x2", "y2", "det_prob", "mask", "mask_prob", "gender",
           "gender_prob", "age", "age_prob", "age_years", "label", "class")  # age_years: age_target=years runs
MASK_COLOURS = {"wear": (0, 170, 0), "incorrect": (235, 140, 0), "not_wear": (215, 0, 0)}
MAX_MEGAPIXELS = 40.0  # per photo, from its header (serve, the Python API): 7300 x 5500, 120 MB once decoded to RGB
PHOTOS_PER_BATCH = 16  # photos detected and classified together: their faces share the classifier batches
# decoded pixels held at once, by a batch of photos or by a served request: 400 MB as Pillow holds RGB (4 bytes
# a pixel), two 40-megapixel photos or 16 of 6; a JPEG counts at the size it decodes at (DetectSettings.max_side)
BATCH_MEGAPIXELS = 100.0
# pixels of detection copies in one detector call: MTCNN's float input, pyramid and P-net maps take ~50 bytes a pixel
DETECT_MEGAPIXELS = 8.0


MAX_OVERLAP = 0.5  # a less confident face covering more than this fraction of a kept face (or of itself) repeats it
# detector -> its default ``min_prob``. RetinaFace: the crops' score threshold, which the bundled models' crops
# were cut at; a masked face scores lower than a bare one (at 0.9 it misses about 6 % of the dev set's masked
# faces that 0.5 finds; the sample photos' faces all score 0.96 or more, see docs/benchmarks.md).
MIN_PROB = {"retinaface": RETINAFACE_SCORE, "mtcnn": 0.9}


@dataclass(frozen=True)
class DetectSettings:
    detector: str = "retinaface"  # retinaface | mtcnn (facenet-pytorch's)
    # the detector's score a face needs to get a row (RetinaFace's score, MTCNN's O-net probability in every
    # pass); None: the detector's default (MIN_PROB), see ``score_threshold``
    min_prob: float | None = None
    # MTCNN only: its P-, R- and O-net thresholds per pass: the training crops' first two. The first misses about
    # a third of masked faces (masks hide the nose and mouth), the looser second finds most of them, plus eyes
    # and whole-head boxes, which are dropped as repeats of a face found with more confidence (MAX_OVERLAP).
    passes: tuple[tuple[float, float, float], ...] = (DEFAULT_THRESHOLDS, LOOSE)
    # pixels of the copy the detector sees: a face whose box is smaller (its shorter side) gets no row, whichever
    # the detector; MTCNN's image pyramid does not look for smaller faces either
    min_face_size: int = 20
    # The detector looks at a copy whose longer side is at most this (0: the photo as is): MTCNN's pyramid's time
    # and memory grow with the area (a 10000 x 10000 photo took minutes and 8 GB). A larger JPEG is decoded at 1/2,
    # 1/4 or 1/8 scale, its longer side still at least this, and faces are cut from that (at 1600 a face the
    # detector can find is 20 px or more, and the classifiers see 96-128 px); other formats at full size. A face
    # under min_face_size x (longer side / max_side) pixels of the original is missed.
    max_side: int = 1600
    tta: bool = False
    runtime: str = "torch"  # torch | onnx (the runs' exported <which>.onnx)
    device: str = "auto"

    def __post_init__(self):
        if self.detector not in DETECTORS:
            raise ConfigError(f"detector {self.detector!r}: expected one of {', '.join(DETECTORS)}")

    @property
    def score_threshold(self) -> float:
        """The score a face needs: ``min_prob``, or the detector's default when None."""
        return MIN_PROB[self.detector] if self.min_prob is None else self.min_prob

    def record(self) -> dict:
        """The settings that decide which faces are found, as the note writes them."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("tta", "runtime")}
        if self.detector != "mtcnn":
            del fields["passes"]  # MTCNN's thresholds
        return {**fields, "min_prob": self.score_threshold}


def create_face_detectors(settings: DetectSettings, device=None) -> list:
    """The detectors ``find_faces`` runs in turn: RetinaFace (faces.RetinaFace, the crop cache's) at the score
    threshold, or one MTCNN per pass of ``settings.passes``."""
    if settings.detector == "retinaface":
        return [RetinaFace(settings.score_threshold)]
    return [create_detector(thresholds, settings.min_face_size, device) for thresholds in settings.passes]


@dataclass
class Specialist:
    """The runs of one task and what predicts for each; several runs are averaged (soft vote)."""

    task: str
    runs: list[Run]
    models: list[nn.Module]


@dataclass
class Detections:
    rows: list[dict] = field(default_factory=list)
    photos: int = 0  # readable photos
    unreadable: list[str] = field(default_factory=list)  # one message per file that did not decode
    annotated: list[Path] = field(default_factory=list)

    @property
    def faces(self) -> int:
        return sum(row["status"] == "face" for row in self.rows)

    @property
    def no_face(self) -> list[str]:
        return [row["file"] for row in self.rows if row["status"] == "no_face"]

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(COLUMNS))


@dataclass(frozen=True)
class PhotoHeader:
    """What a photo's header says, read before any pixel is decoded."""

    format: str | None  # PIL's name: JPEG, PNG, WEBP...
    size: tuple[int, int]  # as stored, before the EXIF rotation
    scale: int = 1  # the photo decodes this many times smaller (1, 2, 4 or 8: a large JPEG, see reduce_jpeg)
    turned: bool = False  # EXIF turns it by 90 degrees (read only where scale > 1: a JPEG's EXIF is in its header)

    @property
    def decoded_pixels(self) -> int:
        return -(-self.size[0] // self.scale) * -(-self.size[1] // self.scale)


@dataclass
class Photo:
    """A photo as the models see it, ``scale`` times smaller than its own ``size`` (a large JPEG decoded
    reduced); the rows' boxes and sizes are in the photo's own pixels."""

    name: str
    image: Image.Image  # RGB, EXIF-rotated
    size: tuple[int, int]
    scale: int = 1


# --- inputs -----------------------------------------------------------------------------------------

def find_photos(paths: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """(photo, name relative to what was given): files as given, folders searched for image files, sorted."""
    photos = []
    for given in map(Path, paths):
        if given.is_dir():
            found = sorted(p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(given).parts))
            if not found:
                raise DataError(f"{given}: holds no image files ({', '.join(PHOTO_SUFFIXES)})")
            photos += [(p, p.relative_to(given)) for p in found]
        elif given.is_file():
            photos.append((given, Path(given.name)))  # named on the command line: tried whatever its suffix
        else:
            raise DataError(f"{given}: no such file or folder")
    return photos


def photo_header(image: Image.Image, max_side: int) -> PhotoHeader:
    """The header of ``image`` (opened, not loaded), as it decodes for a detector that looks at ``max_side``."""
    size, scale = image.size, reduce_jpeg(image, max_side)
    turned = scale > 1 and image.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
    return PhotoHeader(image.format, size, scale, turned)


def read_header(path: Path, max_side: int) -> PhotoHeader | None:
    """``path``'s header, or None when it does not read (``open_rgb`` then names the problem)."""
    try:
        with Image.open(path) as image:
            return photo_header(image, max_side)
    except Exception:  # PIL raises many types for bad files
        return None


def decode_photo(source: str | Path | BinaryIO, name: str, header: PhotoHeader | None, max_side: int) -> Photo:
    """The photo decoded as its header said (``header`` from :func:`photo_header` with the same ``max_side``;
    None: at full size)."""
    if header is None or header.scale == 1:
        image = open_rgb(source, name)
        return Photo(name, image, image.size)
    width, height = header.size
    image = open_rgb(source, name, min_side=max_side)
    return Photo(name, image, (height, width) if header.turned else (width, height), header.scale)


def photo_batches(photos: Sequence[tuple[Path, Path]], max_side: int
                  ) -> Iterator[list[tuple[Path, Path, PhotoHeader | None]]]:
    """``photos`` in order, in batches of at most PHOTOS_PER_BATCH photos and BATCH_MEGAPIXELS decoded pixels
    (a larger photo alone), each with its header."""
    batch, pixels = [], 0
    for path, name in photos:
        header = read_header(path, max_side)
        cost = header.decoded_pixels if header else 0
        if batch and (len(batch) == PHOTOS_PER_BATCH or pixels + cost > BATCH_MEGAPIXELS * 1e6):
            yield batch
            batch, pixels = [], 0
        batch.append((path, name, header))
        pixels += cost
    if batch:
        yield batch


def load_specialists(runs: dict[str, Sequence[str | Path]], which: str = "best",
                     runtime: str = "torch") -> list[Specialist]:
    """Each task's runs loaded, checked to be of that task, with the model ``runtime`` asks for."""
    specialists = []
    for task in SPECIALISTS:
        if not runs.get(task):
            raise DataError(f"no {task} run given")
        loaded = [load_run(run_dir, which) for run_dir in runs[task]]
        for run in loaded:
            if run.task != task:
                raise DataError(f"{run.run_dir}: is a {run.task} run, not {task}")
        specialists.append(Specialist(task, loaded, [inference_model(run, runtime) for run in loaded]))
    return specialists


# --- crops and classification -----------------------------------------------------------------------

def find_faces(images: Sequence[Image.Image], detectors: Sequence, min_prob: float,
               max_side: int = 0, min_face_size: int = 0) -> list[list[Face]]:
    """Every face of each image at ``min_prob`` or above and ``min_face_size`` pixels or more, left to right: the
    first detector's faces, then each later detector's; a face that repeats one found with more confidence (an
    eye inside it, a whole head around it) is dropped. Detected on ``detection_copy`` (``max_side``, where the
    size is measured), boxes in the image's own pixels. A detector sees at most DETECT_MEGAPIXELS of copies at a
    time. The image gets detect_faces' grey border: it lifts RetinaFace's score of a face cut by the edge, too."""
    found: list[list[Face]] = []
    for start, stop in _spans([detection_size(image.size, max_side) for image in images], DETECT_MEGAPIXELS * 1e6):
        copies = [detection_copy(image, max_side) for image in images[start:stop]]
        chunk: list[list[Face]] = [[] for _ in copies]
        for detector in detectors:
            for kept, faces, image, copy in zip(chunk, detect_faces(copies, detector, min_prob), images[start:stop],
                                                copies):
                for face in (face_in_image(f, "image", image.size, copy.size) for f in faces
                             if f.side >= min_face_size):  # most confident first
                    if all(_overlap(face.box, other.box) <= MAX_OVERLAP for other in kept):
                        kept.append(face)
        found += chunk
    return [sorted(faces, key=lambda face: (face.box[0], face.box[1])) for faces in found]


def _spans(sizes: Sequence[tuple[int, int]], max_pixels: float) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive runs of ``sizes`` holding at most ``max_pixels`` (one larger size alone)."""
    start, pixels = 0, 0
    for index, (width, height) in enumerate(sizes):
        if index > start and pixels + width * height > max_pixels:
            yield start, index
            start, pixels = index, 0
        pixels += width * height
    if start < len(sizes):
        yield start, len(sizes)


def detection_copy(image: Image.Image, max_side: int) -> Image.Image:
    """``image`` shrunk so that its longer side is ``max_side`` (as it is when already smaller, or ``max_side``
    is 0)."""
    size = detection_size(image.size, max_side)
    if size == image.size:
        return image
    return image.resize(size, Image.BILINEAR, reducing_gap=2.0)  # reducing_gap: a fast box pre-shrink


def detection_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` within ``max_side`` (0: as it is), as the crops' bounded copy scales it."""
    return bounded_size(size, max_side) if max_side else size


def _overlap(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over the smaller box's area: 1 when one box holds the other (an eye inside a face)."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return width * height / smaller if smaller > 0 else 1.0


def face_crops(image: Image.Image, faces: Sequence[Face], config) -> list[Image.Image]:
    """Each face as the run's training crops were cut: the box grown by ``config.crop_margin``, clipped."""
    settings = CropSettings.from_config(config)
    return [image.crop(crop_box(face, image.size, settings)) for face in faces]


def classify(specialist: Specialist, photos: Sequence[tuple[Image.Image, Sequence[Face]]], settings: DetectSettings,
             engine: Engine) -> Prediction:
    """Every face of ``photos`` in order, averaged over the task's runs (the expected age over the runs that report
    one, ``age_target: years``)."""
    predictions = []
    for run, model in zip(specialist.runs, specialist.models):
        crops = [crop for image, faces in photos for crop in face_crops(image, faces, run.config)]
        dataset = build_dataset(run.config, range(len(crops)), run.mean, run.std, image_loader=crops.__getitem__)
        views = build_views(tta_views(run.config, settings.tta))
        predictions.append(predict(model, dataset, engine, views, run.config.batch_size,
                                   desc=f"{specialist.task} {run.run_dir.name}"))
    return Prediction.mean(predictions)


def face_rows(file: str, size: tuple[int, int], faces: Sequence[Face],
              predictions: dict[str, Prediction]) -> list[dict]:
    """One row per face (``faces`` left to right, in the pixels of a photo of ``size``; each task's prediction
    aligned with them), or one ``no_face`` row."""
    if not faces:
        return [{"file": file, "status": "no_face"}]
    width, height = size
    ages = predictions["age"].age_years  # None: no age_target=years run
    rows = []
    for index, face in enumerate(faces):
        x1, y1, x2, y2 = face.box
        row = {"file": file, "status": "face", "face": index + 1,
               "x1": max(0, round(x1)), "y1": max(0, round(y1)), "x2": min(width, round(x2)),
               "y2": min(height, round(y2)), "det_prob": round(face.prob, 4)}
        codes = {}
        for task in SPECIALISTS:
            probs = predictions[task].probs
            codes[task] = int(probs[index].argmax())
            row[task] = get_task(task).class_names[codes[task]]
            row[f"{task}_prob"] = round(float(probs[index, codes[task]]), 4)
        row[AGE_COLUMN] = None if ages is None else round(float(ages[index]), 1)
        row["label"] = int(encode(codes["mask"], codes["gender"], codes["age"]))
        row["class"] = class_name(row["label"])
        rows.append(row)
    return rows


def face_line(row: dict) -> str:
    """One face of detect's rows in words: file, face number, box, and each task's answer with its probability."""
    age = "" if row.get(AGE_COLUMN) is None else f" (about {row[AGE_COLUMN]:.0f} years)"
    return (f"{row['file']} face {row['face']} [{row['x1']}, {row['y1']}, {row['x2']}, {row['y2']}]: "
            f"mask {row['mask']} {row['mask_prob']:.2f}, {row['gender']} {row['gender_prob']:.2f}, "
            f"age {row['age']} {row['age_prob']:.2f}{age}")


# --- annotation -------------------------------------------------------------------------------------

def annotate(image: Image.Image, rows: Sequence[dict]) -> Image.Image:
    """A copy of ``image`` with each face's box (coloured by mask: green wear, orange incorrect, red not
    wear) and its number, mask, gender and age band; a photo without a face says so in its corner."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    short_side = min(image.size)
    font = ImageFont.load_default(size=max(11, round(short_side / 40)))
    line = max(2, round(short_side / 250))
    for row in rows:
        if row["status"] != "face":
            _label(draw, (0, 0), "no face found", (90, 90, 90), font, image.width)
            continue
        box = (row["x1"], row["y1"], row["x2"], row["y2"])
        colour = MASK_COLOURS[row["mask"]]
        draw.rectangle(box, outline=colour, width=line)
        text = f"{row['face']} {row['mask']} {row['mask_prob']:.2f}\n{row['gender']} {row['age']}"
        _label(draw, (box[0], box[1]), text, colour, font, image.width, above=True)
    return image


def _label(draw: ImageDraw.ImageDraw, corner: tuple[int, int], text: str, colour, font, image_width: int,
           above: bool = False) -> None:
    """White text on a ``colour`` panel at ``corner``: above it when there is room, else just inside."""
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font)
    pad = max(2, round(font.size / 6))
    width, height = right - left + 2 * pad, bottom - top + 2 * pad
    x = min(corner[0], max(0, image_width - width))
    y = corner[1] - height if above and corner[1] >= height else corner[1]
    draw.rectangle((x, y, x + width, y + height), fill=colour)
    draw.multiline_text((x + pad - left, y + pad - top), text, fill=(255, 255, 255), font=font)


def annotated_path(out_dir: Path, name: Path, taken: set[Path]) -> Path:
    """``out_dir/name``, as PNG unless it is a JPEG or PNG already; ``_2``, ``_3``... when a name repeats."""
    path = out_dir / (name if name.suffix.lower() in (".jpg", ".jpeg", ".png") else name.with_suffix(".png"))
    stem, number = path.stem, 2
    while path in taken:
        path, number = path.with_name(f"{stem}_{number}{path.suffix}"), number + 1
    taken.add(path)
    return path


def save_image(image: Image.Image, path: Path) -> Path:
    with atomic_path(path) as tmp:
        jpeg = path.suffix.lower() in (".jpg", ".jpeg")
        image.save(tmp, format="JPEG" if jpeg else "PNG", **({"quality": 92} if jpeg else {}))
    return path


# --- the detect command -----------------------------------------------------------------------------

class ImageTooLarge(DataError):
    """An image over the pixel limit, refused before it is decoded."""


def check_pixels(name: str, size: tuple[int, int], max_megapixels: float) -> None:
    """An ImageTooLarge naming ``name`` when ``size`` (width, height) is over ``max_megapixels``."""
    width, height = size
    if width * height > max_megapixels * 1e6:
        raise ImageTooLarge(f"{name}: image too large ({width} x {height} pixels, over {max_megapixels:g} megapixels)")


def face_records(rows: Sequence[dict]) -> list[dict]:
    """A photo's faces as the API answers them: its rows with a face, less ``file`` and ``status``."""
    return [{k: v for k, v in row.items() if k not in ("file", "status")} for row in rows if row["status"] == "face"]


class FaceChecker:
    """Every face in a photo with its mask, gender and age band: the Python API, and what ``maskcls detect`` and
    ``maskcls serve`` check photos through. Loaded once: the specialists, the face detector and the engine.

        from maskcls import FaceChecker
        checker = FaceChecker()  # the bundled specialists
        for face in checker.predict("photo.jpg"):
            print(face["x1"], face["y1"], face["mask"], face["gender"], face["age"], face["class"])

    ``FaceChecker(mask=RUN, age=RUN, gender=RUN)`` answers with the runs named (a run folder, CV or ensemble
    folder, or a list of them, voted) and with the bundled specialist for each task not named; ``settings`` are
    detect's (:class:`DetectSettings`: detector, its thresholds, TTA, runtime, device). :meth:`predict` refuses an image
    over ``max_megapixels``, as serve does.

    One instance may be shared by threads: :meth:`predict` runs one call at a time under the instance's lock
    (the detector and the classifiers are not meant to be called from several threads at once, and torch already
    spreads one call over the cores); images are read before the lock. :meth:`rows` takes no lock: serve holds
    its own around it.
    """

    def __init__(self, mask=None, age=None, gender=None, *, settings: DetectSettings = DetectSettings(),
                 which: str = "best", max_megapixels: float = MAX_MEGAPIXELS):
        from .bundle import resolve_runs

        named = {"mask": mask, "age": age, "gender": gender}
        named = {task: [runs] if isinstance(runs, (str, Path)) else runs for task, runs in named.items()}
        runs = resolve_runs(named, which=which, bundled=True)
        self._setup(load_specialists(runs, which, settings.runtime), settings, None, max_megapixels)

    @classmethod
    def create(cls, specialists: Sequence[Specialist], settings: DetectSettings,
               detectors: Sequence | None = None) -> FaceChecker:
        """A checker of specialists already loaded (``detectors``: built already, as ``create_face_detectors``)."""
        checker = cls.__new__(cls)
        checker._setup(specialists, settings, detectors, MAX_MEGAPIXELS)
        return checker

    def _setup(self, specialists: Sequence[Specialist], settings: DetectSettings, detectors: Sequence | None,
               max_megapixels: float) -> None:
        device = pick_device(settings.device)
        self.specialists, self.settings, self.max_megapixels = list(specialists), settings, max_megapixels
        self.detectors = detectors or create_face_detectors(settings, device)
        self.engine = inference_engine(specialists[0].runs[0].config, settings.device, workers=0)  # crops in memory
        self._lock = threading.Lock()

    @property
    def bundle_version(self) -> str | None:
        """The version of the bundle when its specialists answer (any task), else None."""
        from .bundle import bundle_version

        return bundle_version(run.run_dir for specialist in self.specialists for run in specialist.runs)

    def predict(self, images) -> list:
        """The faces of ``images``: a path, a PIL image or an RGB uint8 (height, width, 3) array, or a list of
        them. Per image a list of faces, left to right, each a dict of detect's fields (box ``x1 y1 x2 y2``,
        ``det_prob``, ``mask`` ``gender`` ``age`` with ``*_prob``, ``age_years``, the 18-class ``label`` and its
        ``class``); one image given, its list."""
        single = not isinstance(images, (list, tuple))
        photos = [self._read(item, index) for index, item in enumerate([images] if single else images)]
        with self._lock:
            rows = self.rows(photos)
        faces = [face_records(photo_rows) for photo_rows in rows]
        return faces[0] if single else faces

    def _read(self, item, index: int) -> Photo:
        """One input to :meth:`predict` as a photo, its size checked before it is decoded (a file as detect
        decodes it)."""
        if isinstance(item, (str, Path)):
            header = read_header(Path(item), self.settings.max_side)  # None: open_rgb names what is wrong
            check_pixels(str(item), header.size if header else (0, 0), self.max_megapixels)
            return decode_photo(item, str(item), header, self.settings.max_side)
        name = f"image {index + 1}"
        if isinstance(item, Image.Image):
            check_pixels(name, item.size, self.max_megapixels)
            return Photo(name, item.convert("RGB"), item.size)
        if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 3 and item.shape[2] == 3:
            check_pixels(name, (item.shape[1], item.shape[0]), self.max_megapixels)
            return Photo(name, Image.fromarray(item), (item.shape[1], item.shape[0]))
        what = f"array of {item.dtype} {item.shape}" if isinstance(item, np.ndarray) else type(item).__name__
        raise DataError(f"{name}: expected a path, a PIL image or an RGB uint8 (height, width, 3) array, got {what}")

    def rows(self, photos: Sequence[Photo | tuple[str, Image.Image]]) -> list[list[dict]]:
        """Each photo's rows (a Photo, or a (name, RGB image) pair): its faces found, cropped and classified
        together."""
        photos = [photo if isinstance(photo, Photo) else Photo(photo[0], photo[1], photo[1].size) for photo in photos]
        images = [photo.image for photo in photos]
        found = find_faces(images, self.detectors, self.settings.score_threshold, self.settings.max_side,
                           self.settings.min_face_size) if photos else []
        pairs = list(zip(images, found))
        scored = ({s.task: classify(s, pairs, self.settings, self.engine) for s in self.specialists}
                  if any(found) else {})
        rows, start = [], 0
        for photo, faces in zip(photos, found):
            end = start + len(faces)
            at_size = [face_in_image(face, "image", (photo.image.width * photo.scale, photo.image.height * photo.scale),
                                     photo.image.size) for face in faces]  # the decoded pixels x scale
            rows.append(face_rows(photo.name, photo.size, at_size,
                                  {task: p[start:end] for task, p in scored.items()}))
            start = end
        return rows


def detect_photos(paths: Sequence[str | Path], specialists: Sequence[Specialist], settings: DetectSettings,
                  annotate_dir: str | Path | None = None, detectors: Sequence | None = None) -> Detections:
    """Find, crop and classify every face of every photo under ``paths``; draw them into ``annotate_dir``."""
    from .progress import progress

    photos = find_photos(paths)
    checker = FaceChecker.create(specialists, settings, detectors)
    result, taken = Detections(), set()
    bar = progress(total=len(photos), desc="detect", unit="photo",
                   disable=None if len(photos) > PHOTOS_PER_BATCH else True)
    for batch in photo_batches(photos, settings.max_side):
        _detect_batch(batch, checker, result, annotate_dir, taken)
        bar.update(len(batch))
    bar.close()
    return result


def _detect_batch(batch: Sequence[tuple[Path, Path, PhotoHeader | None]], checker: FaceChecker, result: Detections,
                  annotate_dir: str | Path | None, taken: set[Path]) -> None:
    """One batch of photos decoded, their rows added to ``result`` (and drawn); no image outlives the call."""
    loaded = []
    for path, name, header in batch:
        try:
            loaded.append((path, name, decode_photo(path, str(path), header, checker.settings.max_side)))
        except DataError as err:
            result.unreadable.append(str(err))
    for (path, name, photo), rows in zip(loaded, checker.rows([photo for _, _, photo in loaded])):
        result.rows += rows
        if annotate_dir is not None:  # drawn at the photo's own size
            image = photo.image if photo.scale == 1 else open_rgb(path)
            result.annotated.append(save_image(annotate(image, rows), annotated_path(Path(annotate_dir), name, taken)))
    result.photos += len(loaded)


def detection_note(specialists: Sequence[Specialist], settings: DetectSettings, result: Detections) -> dict:
    from .bundle import bundle_version

    return {"runs": {s.task: [str(r.run_dir.resolve()) for r in s.runs] for s in specialists},
            "bundle": bundle_version(r.run_dir for s in specialists for r in s.runs),
            "which": specialists[0].runs[0].which, "engine": settings.runtime, "tta": settings.tta,
            "views": {s.task: [name for name, _ in build_views(tta_views(s.runs[0].config, settings.tta))]
                      for s in specialists},
            "crop_margin": {s.task: [r.config.crop_margin for r in s.runs] for s in specialists},
            "detector": settings.detector, "settings": settings.record(),
            "photos": result.photos, "faces": result.faces, "no_face": result.no_face,
            "unreadable": result.unreadable}


def write_detections(result: Detections, note: dict, out: str | Path) -> Path:
    """CSV with the note beside it as JSON, or (``.json``) one JSON file: the note plus ``rows``."""
    out = Path(out)
    table = result.table()
    if out.suffix.lower() == ".json":
        records = json.loads(table.to_json(orient="records"))  # NaN -> null, numpy -> plain numbers
        atomic_write_text(out, json.dumps({**note, "rows": records}, indent=1) + "\n")
        return out
    with atomic_path(out) as tmp:
        table.astype({c: "Int64" for c in ("face", "x1", "y1", "x2", "y2", "label")}).to_csv(tmp, index=False)
    atomic_write_text(note_path(out), json.dumps(note, indent=1) + "\n")
    return out


def run_detect(paths: Sequence[str | Path], runs: dict[str, Sequence[str | Path]], out: str | Path,
               settings: DetectSettings = DetectSettings(), which: str = "best",
               annotate_dir: str | Path | None = None) -> tuple[Detections, Path]:
    """``maskcls detect``: load the specialists, detect and classify, write the rows (and annotated photos)."""
    find_photos(paths)  # a wrong path fails before the models load
    specialists = load_specialists(runs, which, settings.runtime)
    result = detect_photos(paths, specialists, settings, annotate_dir)
    return result, write_detections(result, detection_note(specialists, settings, result), out)
