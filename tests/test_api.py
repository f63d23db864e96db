"""The Python API: ``from maskcls import FaceChecker`` (lazy: importing maskcls loads no torch), ``FaceChecker()``
on the bundle, chosen runs mixed with it, ``predict`` on a path, a PIL image, an array or a list of them giving
the records detect writes, serve's pixel limit, and one instance shared by threads."""
from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from test_bundle import VERSION, bundle, bundle_env  # noqa: F401 (fixtures)
from test_detect import FACE_POINTS, one_thread, portrait, quiet, run, side_by_side  # noqa: F401 (autouse fixtures)

from maskcls.detect import COLUMNS, DetectSettings, ImageTooLarge
from maskcls.errors import DataError
from maskcls.tasks import SPECIALISTS

ROOT = Path(__file__).resolve().parents[1]
FIELDS = [c for c in COLUMNS if c not in ("file", "status")]


def test_importing_maskcls_loads_no_torch_and_face_checker_comes_on_first_use():
    code = ("import sys, maskcls\n"
            "from maskcls.cli import app\n"
            "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    import maskcls
    import maskcls.detect

    assert maskcls.FaceChecker is maskcls.detect.FaceChecker
    with pytest.raises(AttributeError, match="has no attribute 'Checker'"):
        maskcls.Checker


@pytest.fixture(scope="module")
def checker(bundle_env):
    from maskcls import FaceChecker

    return FaceChecker(settings=DetectSettings(device="cpu"))


@pytest.fixture(scope="module")
def pair_image():
    return side_by_side(portrait())


def test_face_checker_loads_the_bundle_and_answers_every_input_kind_alike(checker, pair_image, tmp_path):
    assert checker.bundle_version == VERSION
    path = tmp_path / "pair.png"
    pair_image.save(path)
    from_path = checker.predict(path)
    assert len(from_path) == 2 and all(list(face) == FIELDS for face in from_path)
    assert from_path[0]["x2"] <= pair_image.width // 2 < from_path[1]["x1"]  # left to right
    assert checker.predict(str(path)) == from_path
    assert checker.predict(pair_image) == from_path
    assert checker.predict(np.asarray(pair_image)) == from_path
    many = checker.predict([path, np.asarray(portrait()), pair_image])
    assert [len(faces) for faces in many] == [2, 1, 2] and many[0] == many[2] == from_path


def test_predict_gives_the_records_maskcls_detect_writes(checker, pair_image, tmp_path):
    pair_image.save(tmp_path / "pair.png")
    result = run("detect", tmp_path / "pair.png", "--bundled", "--device", "cpu", "--out", tmp_path / "d.json")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "d.json").read_text())["rows"]
    assert checker.predict(tmp_path / "pair.png") == [{k: row[k] for k in FIELDS} for row in rows]


def test_named_runs_mix_with_the_bundle(bundle, tmp_path):
    from conftest import untrained_run
    from test_detect import TINY

    from maskcls import FaceChecker

    own = untrained_run(tmp_path, "mask", TINY)
    checker = FaceChecker(mask=own, settings=DetectSettings(device="cpu"))
    runs = {s.task: [r.run_dir for r in s.runs] for s in checker.specialists}
    assert runs == {"mask": [own], **{task: [bundle.run_dir(task)] for task in SPECIALISTS if task != "mask"}}
    assert checker.bundle_version == VERSION


def test_predict_refuses_too_large_and_unknown_inputs_in_one_line(checker, tmp_path):
    with pytest.raises(ImageTooLarge, match=r"^image 1: image too large \(8000 x 6000 pixels, over 40 megapixels\)$"):
        checker.predict(np.zeros((6000, 8000, 3), np.uint8))
    big = tmp_path / "big.png"
    from PIL import Image

    Image.new("1", (8000, 6000)).save(big)
    with pytest.raises(ImageTooLarge, match=rf"^{big}: image too large"):
        checker.predict(big)
    with pytest.raises(DataError, match=r"^image 2: expected a path, a PIL image or an RGB uint8 \(height, width, 3\) "
                                        r"array, got array of float32 \(8, 8, 3\)$"):
        checker.predict([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(DataError, match=r"nope.png: image file is missing"):
        checker.predict(tmp_path / "nope.png")


def test_the_api_finds_faces_with_retinaface_by_default_and_with_mtcnn_when_asked(checker, bundle_env):
    from maskcls import FaceChecker
    from maskcls.data.faces import RetinaFace

    assert checker.settings.detector == "retinaface" and isinstance(checker.detectors[0], RetinaFace)
    mtcnn = FaceChecker(settings=DetectSettings(detector="mtcnn", min_face_size=32, device="cpu"))
    assert [type(d).__name__ for d in mtcnn.detectors] == ["MTCNN", "MTCNN"]
    for found in (checker, mtcnn):
        face, = found.predict(portrait())
        assert all(face["x1"] < x < face["x2"] and face["y1"] < y < face["y2"] for x, y in FACE_POINTS)


def test_one_checker_may_be_shared_by_threads(checker, pair_image):
    expected = checker.predict(pair_image)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(checker.predict, [pair_image] * 4))
    assert answers == [expected] * 4


def test_serve_names_the_bundle_version_on_v1_models_and_the_page(checker):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from maskcls.serve import create_app

    with TestClient(create_app(checker)) as client:
        models = client.get("/v1/models").json()
        page = client.get("/").text
    assert models["bundle"] == VERSION and [m["bundled"] for m in models["models"]] == [True] * 3
    assert "maskcls bundle ${info.bundle}" in page
