"""maskcls detect: every face of a real photo found (real MTCNN), cropped as training cropped, classified,
drawn; a folder mixing good, face-less and unreadable files; errors as one line naming the file.

The runs are untrained (a fresh test_efficientnet saved as best.pt, as in test_submit): the labels are
arbitrary, but every path from photo to row is the real one.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from conftest import untrained_run
from typer.testing import CliRunner

from maskcls.cli import app
from maskcls.config import load_config
from maskcls.data.faces import Face
from maskcls.detect import COLUMNS, MASK_COLOURS, DetectSettings, Specialist, classify, face_crops
from maskcls.engine import Engine
from maskcls.infer import load_run
from maskcls.tasks import SPECIALISTS, get_task

skimage_data = pytest.importorskip("skimage.data")

runner = CliRunner()
TINY = ["backbone=test_efficientnet", "pretrained=none", "crop=none", "img_size=32", "batch_size=8"]
PORTRAIT = (160, 200)  # the astronaut's upper body at the competition's framing (as in test_crop)
FACE_POINTS = [(53, 51), (74, 52), (51, 70), (73, 71)]  # eyes and mouth corners in the portrait


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("MASKCLS_NO_PROGRESS", "1")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: the tiny models gain nothing from two, and on the shared 2-core machine two threads
    wait on each other whenever another job holds a core (several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_run(project, task, name="exp", seed=0, *extra):
    """An untrained run folder with config.yaml and best.pt, as `maskcls train` leaves it."""
    return untrained_run(project, task, [*TINY, f"data_dir={project / 'faces'}", *extra], name, seed)


def portrait() -> Image.Image:
    """Eileen Collins (scikit-image's astronaut), head and shoulders."""
    return Image.fromarray(skimage_data.astronaut()).crop((100, 0, 420, 400)).resize(PORTRAIT)


def side_by_side(image: Image.Image, copies: int = 2) -> Image.Image:
    canvas = Image.new("RGB", (image.width * copies, image.height))
    for k in range(copies):
        canvas.paste(image, (k * image.width, 0))
    return canvas


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """runs/<task>/exp for the three specialists (crop: none, like the sample runs)."""
    root = tmp_path_factory.mktemp("runs")
    for task in SPECIALISTS:
        make_run(root, task)
    return root


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two copies of the portrait side by side, as a lossless PNG (320 x 200)."""
    path = tmp_path_factory.mktemp("photos") / "pair.png"
    side_by_side(portrait()).save(path)
    return path


def test_two_copies_of_a_real_face_give_two_rows_with_boxes_on_their_halves(project, pair, tmp_path):
    out, drawn = tmp_path / "faces.csv", tmp_path / "drawn"
    # faces are about 45 px wide: --min-face 32 spares MTCNN the largest (slowest) levels of its pyramid
    result = run("detect", pair, "--project", project, "--out", out, "--annotate", drawn, "--tta", "--min-face", 32)
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out)
    assert tuple(rows.columns) == COLUMNS
    assert rows["status"].tolist() == ["face", "face"] and rows["face"].tolist() == [1, 2]  # left to right
    half = PORTRAIT[0]
    for (_, row), offset in zip(rows.iterrows(), (0, half)):
        assert offset <= row["x1"] < row["x2"] <= offset + half  # each box on its own half
        for x, y in FACE_POINTS:
            assert row["x1"] < x + offset < row["x2"] and row["y1"] < y < row["y2"]
        assert row["det_prob"] > 0.95
        codes = {task: get_task(task).class_names.index(row[task]) for task in SPECIALISTS}
        assert row["label"] == codes["mask"] * 6 + codes["gender"] * 3 + codes["age"]
        assert row["class"] == f"{row['mask']}/{row['gender']}/{row['age']}"
        assert all(0 < row[f"{task}_prob"] <= 1 for task in SPECIALISTS)
    # the same face twice: the same answer twice (boxes differ by a pixel or two, so the probabilities barely)
    assert rows.loc[0, ["mask", "gender", "age"]].tolist() == rows.loc[1, ["mask", "gender", "age"]].tolist()
    note = json.loads(out.with_suffix(".json").read_text())
    assert note["faces"] == 2 and note["no_face"] == [] and note["unreadable"] == []
    # --tta: the original, the flip and the views configs/mask.yaml names
    assert note["views"]["mask"] == ["orig", "flip", *load_config("mask").tta] and note["engine"] == "torch"

    annotated = Image.open(drawn / "pair.png").convert("RGB")
    original = Image.open(pair).convert("RGB")
    assert annotated.size == original.size
    for _, row in rows.iterrows():  # the box's left edge, half-way down, is drawn in the mask's colour
        assert annotated.getpixel((int(row["x1"]), int((row["y1"] + row["y2"]) // 2))) == MASK_COLOURS[row["mask"]]
    assert "annotated 1 photo(s)" in result.stdout


def test_a_face_is_cut_out_with_its_runs_margin_whatever_the_runs_crop_mode():
    image = Image.new("RGB", (200, 100))
    face = Face((50.0, 20.0, 90.0, 60.0), 0.99)
    for mode in ("none", "center", "faces"):
        config = load_config("mask", [f"crop={mode}", "crop_margin=0.5"])
        crop, = face_crops(image, [face], config)
        assert crop.size == (80, 80)  # 40 px box + 2 x 20 px margin; the top clipped at 0, the bottom at 80
    assert face_crops(image, [face], load_config("mask", ["crop_margin=0"]))[0].size == (40, 40)


def test_a_folder_of_good_faceless_and_unreadable_files(project, pair, tmp_path):
    folder = tmp_path / "entrance"
    (folder / "day2").mkdir(parents=True)
    Image.open(pair).save(folder / "group.jpg", quality=95)
    Image.new("RGB", (240, 180), (128, 128, 128)).save(folder / "day2" / "empty_hall.png")
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    data = (folder / "group.jpg").read_bytes()
    (folder / "day2" / "cut_off.jpg").write_bytes(data[: len(data) // 3])  # a half-copied upload
    (folder / "notes.txt").write_text("not a photo: ignored")
    out = tmp_path / "faces.json"
    result = run("detect", folder, "--project", project, "--out", out, "--annotate", tmp_path / "drawn",
                 "--min-face", 32)
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.stderr.splitlines() if line.startswith("warning: skipped")]
    assert len(skipped) == 2 and "broken.jpg" in skipped[0] and "cut_off.jpg" in skipped[1]
    assert f"{folder / 'day2' / 'empty_hall.png'}: no face found" in result.stdout
    written = json.loads(out.read_text())
    table = pd.DataFrame(written["rows"])
    assert table.groupby("file")["status"].apply(list).to_dict() == {
        str(folder / "group.jpg"): ["face", "face"], str(folder / "day2" / "empty_hall.png"): ["no_face"]}
    for row in (r for r in written["rows"] if r["status"] == "face"):  # each face printed in words
        box = ", ".join(str(int(row[k])) for k in ("x1", "y1", "x2", "y2"))  # JSON: floats beside no_face rows
        assert (f"{row['file']} face {int(row['face'])} [{box}]: mask "
                f"{row['mask']} {row['mask_prob']:.2f}, {row['gender']} {row['gender_prob']:.2f}, age {row['age']} "
                f"{row['age_prob']:.2f}") in result.stdout
    quiet = run("detect", folder / "group.jpg", "--project", project, "--out", tmp_path / "q.csv", "--quiet")
    assert quiet.exit_code == 0 and " face 1 [" not in quiet.stdout and "1 photo(s), 2 face(s)" in quiet.stdout
    assert written["photos"] == 2 and written["faces"] == 2 and len(written["unreadable"]) == 2
    no_face_row = table[table["status"] == "no_face"].iloc[0]
    assert no_face_row[["face", "x1", "mask", "label"]].isna().all()
    # annotated copies keep the folder's layout; unreadable files get none
    assert sorted(p.relative_to(tmp_path / "drawn").as_posix() for p in (tmp_path / "drawn").rglob("*.*")) == [
        "day2/empty_hall.png", "group.jpg"]


@pytest.mark.parametrize("case", ["missing photo", "no runs", "wrong task", "empty folder"])
def test_errors_are_one_line_naming_the_file(project, pair, tmp_path, case):
    args, expected = {
        "missing photo": ([tmp_path / "nope.jpg", "--project", project], f"{tmp_path / 'nope.jpg'}: no such file"),
        "no runs": ([pair, "--project", tmp_path / "empty"], f"{tmp_path / 'empty' / 'mask'}: no run"),
        "wrong task": ([pair, "--project", project, "--mask", project / "age" / "exp"], "is a age run, not mask"),
        "empty folder": ([tmp_path, "--project", project], f"{tmp_path}: holds no image files"),
    }[case]
    result = run("detect", *args, "--out", tmp_path / "out.csv")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert expected in result.stderr
    assert not (tmp_path / "out.csv").exists()


def test_repeated_runs_of_a_task_are_averaged(project, tmp_path):
    runs = [load_run(project / "mask" / "exp"), load_run(make_run(tmp_path, "mask", "seed1", 1))]
    photos = [(portrait(), [Face((45.0, 30.0, 85.0, 90.0), 0.99), Face((10.0, 10.0, 40.0, 50.0), 0.95)])]
    engine = Engine(torch.device("cpu"), amp=False, channels_last=False)
    alone = [classify(Specialist("mask", [r], [r.model]), photos, DetectSettings(), engine).probs for r in runs]
    both = classify(Specialist("mask", runs, [r.model for r in runs]), photos, DetectSettings(), engine).probs
    assert both.shape == (2, 3) and not np.allclose(alone[0], alone[1])
    assert np.allclose(both, (alone[0] + alone[1]) / 2, atol=1e-6)


# ------------------------------------------------------------------------ photos too small or too large

def huge_png_header(path, width: int, height: int):
    """A 60-byte PNG whose header claims ``width`` x ``height`` pixels: a decompression bomb's first bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("min_face", [12, 20, 47])
def test_images_too_small_for_the_pyramid_have_no_face_instead_of_crashing_mtcnn(min_face):
    from maskcls.data.faces import create_detector, detect_faces

    detector = create_detector(min_face_size=min_face, device="cpu")
    sizes = [(1, 1), (14, 14), (min_face - 1, 300), (300, min_face - 1), (min_face, min_face), (min_face + 1, 40)]
    images = [Image.new("RGB", size, (128, 128, 128)) for size in sizes]
    assert detect_faces(images, detector, pad=0) == [[] for _ in sizes]
    assert detect_faces(images[:2], detector) == [[], []]  # the default grey border does not make 14 px enough


def test_tiny_photos_get_no_face_rows_and_the_rest_of_their_batch_its_rows(project, pair, tmp_path):
    folder = tmp_path / "uploads"
    folder.mkdir()
    Image.open(pair).save(folder / "b_group.png")
    Image.new("RGB", (1, 1), (200, 150, 120)).save(folder / "a_dot.png")
    Image.new("RGB", (14, 14), (200, 150, 120)).save(folder / "c_icon.png")
    out = tmp_path / "faces.csv"
    result = run("detect", folder, "--project", project, "--out", out, "--annotate", tmp_path / "drawn")
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out)
    assert rows.groupby("file")["status"].apply(list).to_dict() == {
        str(folder / "a_dot.png"): ["no_face"], str(folder / "b_group.png"): ["face", "face"],
        str(folder / "c_icon.png"): ["no_face"]}
    assert (tmp_path / "drawn" / "a_dot.png").is_file()


def test_a_large_photo_is_detected_on_a_downscaled_copy_and_cut_from_the_original(project, pair, tmp_path,
                                                                                   monkeypatch):
    import maskcls.detect as detect_module

    scale = 3
    big = Image.open(pair).convert("RGB")
    big = big.resize((big.width * scale, big.height * scale), Image.BICUBIC)
    big.save(tmp_path / "big.png")
    seen, cut_from = [], []
    real_detect, real_crops = detect_module.detect_faces, detect_module.face_crops
    monkeypatch.setattr(detect_module, "detect_faces", lambda images, *a, **k: seen.extend(i.size for i in images)
                        or real_detect(images, *a, **k))
    monkeypatch.setattr(detect_module, "face_crops", lambda image, *a, **k: cut_from.append(image.size)
                        or real_crops(image, *a, **k))
    out = tmp_path / "faces.csv"
    result = run("detect", tmp_path / "big.png", "--project", project, "--out", out, "--min-face", 32,
                 "--max-side", PORTRAIT[0] * 2)
    assert result.exit_code == 0, result.output
    assert seen and all(max(size) <= PORTRAIT[0] * 2 for size in seen)  # MTCNN saw the copy
    assert set(cut_from) == {big.size}  # the faces were cut from the original
    rows = pd.read_csv(out)
    assert rows["status"].tolist() == ["face", "face"]
    half = PORTRAIT[0] * scale
    for (_, row), offset in zip(rows.iterrows(), (0, half)):  # boxes in the original's pixels
        assert offset <= row["x1"] < row["x2"] <= offset + half
        for x, y in FACE_POINTS:
            assert row["x1"] < (x * scale) + offset < row["x2"] and row["y1"] < y * scale < row["y2"]
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["max_side"] == PORTRAIT[0] * 2


def test_decompression_bombs_are_refused_naming_the_file_and_the_run_goes_on(project, pair, tmp_path):
    folder = tmp_path / "uploads"
    folder.mkdir()
    Image.open(pair).save(folder / "group.png")
    bomb = huge_png_header(folder / "bomb.png", 40_000, 40_000)  # 1.6 billion pixels: 4.8 GB once decoded
    out = tmp_path / "faces.csv"
    result = run("detect", folder, "--project", project, "--out", out, "--min-face", 32)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"warning: skipped {bomb}: not decoded, a possible decompression bomb (")
    assert "1600000000 pixels" in warnings[0]
    assert pd.read_csv(out)["status"].tolist() == ["face", "face"]


# ------------------------------------------------------------------------------- bounded memory

def test_a_large_jpeg_decodes_reduced_and_its_rows_are_in_the_photos_own_pixels(project, pair, tmp_path):
    """A JPEG over --max-side decodes at 1/2, 1/4 or 1/8 scale; the boxes match the full-size PNG's."""
    from maskcls.detect import decode_photo, read_header

    scale, max_side = 5, 400  # 1600 x 1000 decodes at 1/4 (400 x 250): its longer side still --max-side
    big = Image.open(pair).convert("RGB").resize((PORTRAIT[0] * 2 * scale, PORTRAIT[1] * scale), Image.BICUBIC)
    big.save(tmp_path / "big.png")
    big.save(tmp_path / "big.jpg", quality=95)
    header = read_header(tmp_path / "big.jpg", max_side)
    photo = decode_photo(tmp_path / "big.jpg", "big.jpg", header, max_side)
    assert (header.scale, photo.scale, photo.size, photo.image.size) == (4, 4, big.size, (400, 250))
    assert read_header(tmp_path / "big.png", max_side).scale == 1  # only a JPEG decodes smaller

    tables = {}
    for name in ("big.png", "big.jpg"):
        out = tmp_path / f"{name}.csv"
        result = run("detect", tmp_path / name, "--project", project, "--out", out, "--min-face", 20,
                     "--max-side", max_side, "--annotate", tmp_path / "drawn")
        assert result.exit_code == 0, result.output
        tables[name] = pd.read_csv(out)
    png, jpg = tables["big.png"], tables["big.jpg"]
    assert png["status"].tolist() == jpg["status"].tolist() == ["face", "face"]
    width = (png["x2"] - png["x1"]).to_numpy()
    for column in ("x1", "y1", "x2", "y2"):  # the same boxes, within a few percent of the face's width
        assert (abs(png[column] - jpg[column]) < 0.06 * width).all(), (png, jpg)
    assert Image.open(tmp_path / "drawn" / "big.jpg").size == big.size  # drawn at the photo's own size


def test_a_turned_jpeg_decoded_reduced_keeps_its_turned_size():
    from io import BytesIO

    from maskcls.detect import decode_photo, photo_header

    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: turn 90 degrees clockwise to view
    buffer = BytesIO()
    Image.new("RGB", (1601, 803), (90, 120, 150)).save(buffer, format="JPEG", exif=exif.tobytes())
    header = photo_header(Image.open(BytesIO(buffer.getvalue())), 400)
    assert (header.scale, header.turned, header.decoded_pixels) == (4, True, 401 * 201)
    photo = decode_photo(BytesIO(buffer.getvalue()), "turned.jpg", header, 400)
    assert photo.size == (803, 1601) and photo.image.size == (201, 401)


def test_detect_batches_are_bounded_by_decoded_pixels_not_only_by_count(tmp_path, monkeypatch):
    import maskcls.detect as detect_module

    sizes = [(1000, 1000), (400, 500), (400, 500), (3000, 2000), (300, 300), (300, 300)]
    photos = []
    for index, size in enumerate(sizes):
        path = tmp_path / f"{index}.png"
        Image.new("RGB", size).save(path)
        photos.append((path, path))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    photos.append((tmp_path / "bad.png", tmp_path / "bad.png"))
    monkeypatch.setattr(detect_module, "BATCH_MEGAPIXELS", 1.1)
    batches = list(detect_module.photo_batches(photos, max_side=0))
    assert [[path.stem for path, _, _ in batch] for batch in batches] == [["0"], ["1", "2"], ["3"], ["4", "5", "bad"]]
    assert batches[-1][-1][2] is None  # a header that does not read: open_rgb names the problem later
    monkeypatch.setattr(detect_module, "PHOTOS_PER_BATCH", 2)
    assert [len(b) for b in detect_module.photo_batches(photos[4:], max_side=0)] == [2, 1]


def test_mtcnn_sees_at_most_detect_megapixels_of_copies_at_a_time(monkeypatch):
    import maskcls.detect as detect_module

    calls = []
    monkeypatch.setattr(detect_module, "detect_faces", lambda copies, detector, min_prob: calls.append(
        [copy.size for copy in copies]) or [[] for _ in copies])
    monkeypatch.setattr(detect_module, "DETECT_MEGAPIXELS", 0.5)
    images = [Image.new("RGB", size) for size in [(800, 600), (1600, 1200), (500, 500), (500, 500), (100, 100)]]
    assert detect_module.find_faces(images, ["one pass", "two"], 0.9, max_side=800) == [[] for _ in images]
    per_pass = [[(800, 600)], [(800, 600)], [(500, 500), (500, 500)], [(100, 100)]]
    assert calls == [size for chunk in per_pass for size in (chunk, chunk)]


# ------------------------------------------------------------------------------- face detectors

@pytest.mark.parametrize("detector", [None, "mtcnn"])  # None: the default
def test_either_detector_finds_both_faces_and_the_note_names_it(project, pair, tmp_path, detector):
    out = tmp_path / "faces.json"
    chosen = ["--detector", detector] if detector else []
    result = run("detect", pair, "--project", project, "--out", out, "--min-face", 32, *chosen)
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert written["detector"] == (detector or "retinaface") == written["settings"]["detector"]
    assert written["settings"]["min_prob"] == {"retinaface": 0.5, "mtcnn": 0.9}[written["detector"]]
    assert ("passes" in written["settings"]) == (detector == "mtcnn")  # MTCNN's thresholds only
    rows = pd.DataFrame(written["rows"])
    assert rows["status"].tolist() == ["face", "face"]
    for (_, row), offset in zip(rows.iterrows(), (0, PORTRAIT[0])):
        for x, y in FACE_POINTS:
            assert row["x1"] < x + offset < row["x2"] and row["y1"] < y < row["y2"]


@pytest.mark.parametrize("detector", ["retinaface", "mtcnn"])
def test_min_face_drops_faces_smaller_than_it_whichever_the_detector(project, pair, tmp_path, detector):
    out = tmp_path / "faces.csv"
    result = run("detect", pair, "--project", project, "--out", out, "--detector", detector, "--min-face", 60)
    assert result.exit_code == 0, result.output  # the faces' boxes are 40-50 px
    assert pd.read_csv(out)["status"].tolist() == ["no_face"]


def test_a_small_face_in_a_large_group_photo_is_found_where_the_crops_size_bounds_would_drop_it(project, tmp_path):
    from maskcls.data.faces import CropSettings

    canvas = Image.fromarray(np.random.default_rng(0).integers(90, 170, (900, 1400, 3), np.uint8))
    canvas.paste(portrait(), (900, 500))
    canvas.save(tmp_path / "group.png")
    out = tmp_path / "faces.csv"
    result = run("detect", tmp_path / "group.png", "--project", project, "--out", out)
    assert result.exit_code == 0, result.output
    row = pd.read_csv(out).iloc[0]
    assert row["status"] == "face" and len(pd.read_csv(out)) == 1
    for x, y in FACE_POINTS:
        assert row["x1"] < x + 900 < row["x2"] and row["y1"] < y + 500 < row["y2"]
    assert (row["x2"] - row["x1"]) / 900 < CropSettings.min_face_fraction  # a portrait's bound would drop it


def test_detects_border_lifts_retinaface_on_a_face_cut_by_the_photos_edge():
    from maskcls.data.faces import RetinaFace, detect_faces
    from maskcls.detect import find_faces

    # the astronaut's face (x 177-272, y 56-176) cut through the middle by the photo's left edge
    half_face = Image.fromarray(skimage_data.astronaut()).crop((225, 0, 525, 300))
    detector = RetinaFace(0.9)
    assert detect_faces([half_face], detector, 0.9, pad=0.0) == [[]]  # scored about 0.7 without the border
    face, = find_faces([half_face], [detector], 0.9)[0]
    assert face.box[0] < 5 and face.box[1] < 70 < 160 < face.box[3]


def test_find_faces_drops_a_less_confident_box_inside_a_face_and_faces_under_min_face(monkeypatch):
    import maskcls.detect as detect_module

    head, inside, small, other = (Face((10.0, 10.0, 60.0, 70.0), 0.99), Face((20.0, 15.0, 50.0, 50.0), 0.6),
                                  Face((100.0, 10.0, 115.0, 28.0), 0.95), Face((150.0, 10.0, 190.0, 60.0), 0.8))
    monkeypatch.setattr(detect_module, "detect_faces", lambda copies, detector, min_prob: [
        [head, small, other, inside] for _ in copies])  # most confident first, as detect_faces orders them
    found, = detect_module.find_faces([Image.new("RGB", (200, 100))], ["one detector"], 0.5, min_face_size=20)
    assert found == [head, other]  # the box inside the head repeats it; the 15 px face is under 20


def test_face_detectors_follow_the_settings():
    from maskcls.data.faces import RetinaFace
    from maskcls.detect import create_face_detectors

    retina, = create_face_detectors(DetectSettings())  # --second-pass does not apply to it
    assert isinstance(retina, RetinaFace) and retina.score_threshold == 0.5
    assert create_face_detectors(DetectSettings(min_prob=0.8))[0].score_threshold == 0.8
    mtcnn = create_face_detectors(DetectSettings(detector="mtcnn", min_face_size=30), "cpu")
    assert [m.thresholds for m in mtcnn] == [list(p) for p in DetectSettings.passes]
    assert {m.min_face_size for m in mtcnn} == {30} and DetectSettings(detector="mtcnn").score_threshold == 0.9
    with pytest.raises(ValueError, match="detector 'yolo': expected one of mtcnn, retinaface"):
        DetectSettings(detector="yolo")


def test_detect_finds_every_labelled_face_of_the_sample_photos(project, tmp_path):
    from bench.photos import SAMPLES, match

    out = tmp_path / "faces.csv"
    result = run("detect", SAMPLES, "--project", project, "--out", out)
    assert result.exit_code == 0, result.output
    rows, labels = pd.read_csv(out), pd.read_csv(SAMPLES / "labels.csv")
    found = 0
    for name, truth in labels.groupby("photo"):
        boxes = rows.loc[rows["file"] == str(SAMPLES / name), ["x1", "y1", "x2", "y2"]].dropna().to_numpy().tolist()
        found += sum(j is not None for j in match(truth[["x1", "y1", "x2", "y2"]].to_numpy().tolist(), boxes))
    assert found == len(labels) == 8 and (rows["status"] == "face").sum() <= 10  # MTCNN finds 6
