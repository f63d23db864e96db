"""maskcls export onnx: one file per specialist with a dynamic batch, equal to PyTorch on real images under
onnxruntime; ``--runtime onnx`` for predict and detect; missing, stale and disagreeing files refused."""
from __future__ import annotations

import json
import shutil
import types

import numpy as np
import pandas as pd
import pytest
import torch

from maskcls.data.faces import Face
from maskcls.detect import DetectSettings, Specialist, classify, load_specialists
from maskcls.engine import Engine
from maskcls.errors import ExportError
from maskcls.export import PARITY_ATOL, check_batch, export_run
from maskcls.infer import OnnxRunner, inference_model, load_run
from maskcls.tasks import SPECIALISTS
from test_detect import make_run, one_thread, portrait, quiet, run, side_by_side  # noqa: F401 (autouse fixtures)

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

@pytest.fixture(scope="module")
def real_images(tmp_path_factory):
    """Real photos for the parity check: the astronaut at three framings, and two of her side by side."""
    folder = tmp_path_factory.mktemp("real")
    face = portrait()
    face.save(folder / "portrait.jpg")
    face.crop((30, 20, 100, 110)).save(folder / "close_up.png")
    face.rotate(90, expand=True).save(folder / "rotated.jpg")
    side_by_side(face).save(folder / "pair.png")
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory, real_images):
    """runs/<task>/exp for the three specialists, each exported by `maskcls export onnx` (about 5 s a run)."""
    project = tmp_path_factory.mktemp("runs")
    for task in SPECIALISTS:
        make_run(project, task)
    result = run("export", "onnx", "--project", project, "--check-images", real_images)
    assert result.exit_code == 0, result.output
    return project, result.stdout


def test_one_onnx_file_per_specialist_with_a_dynamic_batch_and_its_metadata(exported):
    project, output = exported
    for task in SPECIALISTS:
        path = project / task / "exp" / "best.onnx"
        assert f"wrote {path}" in output
        model = onnx.load(str(path))
        (images,), (logits, *more) = model.graph.input, model.graph.output
        assert [o.name for o in more] == (["age_years"] if task == "age" else [])  # configs/age.yaml: a year head
        batch, *image_dims = images.type.tensor_type.shape.dim
        assert batch.dim_param and [d.dim_value for d in image_dims] == [3, 32, 32]  # batch symbolic, rest fixed
        assert logits.type.tensor_type.shape.dim[0].dim_param == batch.dim_param
        metadata = {p.key: p.value for p in model.metadata_props}
        assert metadata["task"] == task and metadata["img_size"] == "32" and "logits" in metadata["output"]
        assert len(json.loads(metadata["class_names"])) == {"mask": 3, "gender": 2, "age": 3}[task]
    assert "on 4 real images" in output and f"within {PARITY_ATOL:g}" in output


def test_onnx_probabilities_equal_pytorch_on_real_images_at_every_batch_size(exported, real_images):
    project, _ = exported
    for task in SPECIALISTS:
        loaded = load_run(project / task / "exp")
        onnx_model = OnnxRunner(project / task / "exp" / "best.onnx")
        images = check_batch(loaded, sorted(real_images.iterdir()))
        with torch.inference_mode():
            expected = loaded.model(images).softmax(1)
            for size in (1, len(images)):  # batches the exporter never saw (it traced 2)
                got = onnx_model(images[:size]).softmax(1)
                assert got.shape == expected[:size].shape
                assert float((got - expected[:size]).abs().max()) < PARITY_ATOL


def test_predict_with_runtime_onnx_answers_as_pytorch(exported, sample_dataset, tmp_path):
    project, _ = exported
    tables = {}
    for runtime in ("torch", "onnx"):
        out = tmp_path / f"pred_{runtime}.csv"
        result = run("predict", "age", project / "age" / "exp", sample_dataset, "--runtime", runtime, "--out", out)
        assert result.exit_code == 0, result.output
        tables[runtime] = pd.read_csv(out)
    assert json.loads((tmp_path / "pred_onnx.json").read_text())["engine"] == "onnx"
    assert list(tables["onnx"].columns) == list(tables["torch"].columns) == ["ImageID", "p0", "p1", "p2", "age_years"]
    probs = {runtime: table[["p0", "p1", "p2"]].to_numpy() for runtime, table in tables.items()}
    assert np.abs(probs["torch"] - probs["onnx"]).max() < PARITY_ATOL
    # the old spelling still works, with a one-line note
    out = tmp_path / "old.csv"
    result = run("predict", "age", project / "age" / "exp", sample_dataset, "--engine=onnx", "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == "note: --engine is now --runtime"
    assert pd.read_csv(out).equals(tables["onnx"])


def test_detect_with_runtime_onnx_classifies_faces_as_pytorch(exported, real_images, tmp_path):
    project, _ = exported
    out = tmp_path / "faces.csv"
    result = run("detect", real_images / "pair.png", "--project", project, "--runtime", "onnx", "--no-second-pass",
                 "--min-face", 32, "--out", out)  # faces are about 45 px wide: a shorter MTCNN pyramid
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(out)) == 2 and json.loads(out.with_suffix(".json").read_text())["engine"] == "onnx"
    # the full probabilities, on the same faces, with TTA: onnxruntime as PyTorch
    photos = [(portrait(), [Face((45.0, 30.0, 85.0, 90.0), 0.99), Face((10.0, 10.0, 40.0, 50.0), 0.95)])]
    engine = Engine(torch.device("cpu"), amp=False, channels_last=True)
    settings = DetectSettings(tta=True)
    for specialist in load_specialists({task: [project / task / "exp"] for task in SPECIALISTS}):
        runner = inference_model(specialist.runs[0], "onnx")
        onnx_specialist = Specialist(specialist.task, specialist.runs, [runner])
        expected, got = (classify(s, photos, settings, engine) for s in (specialist, onnx_specialist))
        assert np.abs(got.probs - expected.probs).max() < PARITY_ATOL
        assert (got.age_years is None) == (expected.age_years is None)  # the age head's second output survives
        if expected.age_years is not None:
            assert np.abs(got.age_years - expected.age_years).max() < 0.01  # years


def test_a_missing_or_stale_onnx_file_is_refused_naming_it(exported, sample_dataset, tmp_path):
    project, _ = exported
    copy = shutil.copytree(project / "mask" / "exp", tmp_path / "mask" / "exp")
    make_run(tmp_path, "mask", "exp", 1)  # retrained: a new best.pt beside the old export
    result = run("predict", "mask", copy, sample_dataset, "--runtime", "onnx", "--out", tmp_path / "p.csv")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert f"{copy / 'best.onnx'}: exported from another best.pt" in result.stderr
    assert "maskcls export onnx --mask" in result.stderr
    (copy / "best.onnx").unlink()
    result = run("predict", "mask", copy, sample_dataset, "--runtime", "onnx", "--out", tmp_path / "p.csv")
    assert result.exit_code == 1 and f"{copy / 'best.onnx'}: no ONNX export of best.pt" in result.stderr


class StaleExporter:
    """Stands in for torch.onnx.export (5 s a run): hands back an earlier export of another checkpoint."""

    def __init__(self, onnx_file):
        self.onnx_file, self.model = onnx_file, types.SimpleNamespace(metadata_props={})

    def __call__(self, *args, **kwargs):
        return self

    def save(self, path, external_data=False):
        shutil.copyfile(self.onnx_file, path)


def test_an_export_that_disagrees_with_pytorch_is_not_written(exported, real_images, tmp_path, monkeypatch):
    project, _ = exported
    copy = shutil.copytree(project / "gender" / "exp", tmp_path / "gender" / "exp")
    before = (copy / "best.onnx").read_bytes()
    make_run(tmp_path, "gender", "exp", 1)  # retrained: PyTorch now answers differently from that file
    monkeypatch.setattr(torch.onnx, "export", StaleExporter(project / "gender" / "exp" / "best.onnx"))
    with pytest.raises(ExportError, match=r"best\.onnx: onnxruntime's probabilities differ from PyTorch's by"):
        export_run(copy, check_folder=real_images)
    assert (copy / "best.onnx").read_bytes() == before  # the previous file stays
    assert sorted(p.name for p in copy.iterdir()) == ["best.onnx", "best.pt", "config.yaml"]  # no temporary left


def test_export_without_check_images_fails_naming_the_folder(tmp_path):
    run_dir = make_run(tmp_path, "mask")
    result = run("export", "onnx", "--mask", run_dir, "--age", run_dir, "--gender", run_dir)
    assert result.exit_code == 1
    assert f"{tmp_path / 'faces' / 'eval' / 'images'}: no images to check" in result.stderr


def test_an_onnx_run_takes_the_thread_count_torch_and_the_detector_use(exported):
    project, _ = exported
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runner = inference_model(load_run(project / "mask" / "exp"), "onnx")
            assert runner.session.get_session_options().intra_op_num_threads == threads
    finally:
        torch.set_num_threads(before)
