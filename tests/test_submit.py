"""Inference: TTA views, soft and hard votes, prediction CSVs for eval and val, `maskcls submit` end to end.

Runs are made without training (a fresh test_efficientnet saved as best.pt): fast, and inference does not
care whether the weights are good.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from conftest import untrained_run
from typer.testing import CliRunner

from maskcls.cli import app
from maskcls.config import ConfigError, load_config
from maskcls.data import DEFAULT_AGE_BOUNDS, age_band, decode, load_train, read_eval_images
from maskcls.engine import Engine
from maskcls.infer import build_views, predict_probs, tta_views
from maskcls.submit import vote

runner = CliRunner()
TINY = ["backbone=test_efficientnet", "pretrained=none", "crop=none", "img_size=32", "batch_size=8", "folds=3", "preload=false"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("MASKCLS_NO_PROGRESS", "1")


def make_run(project, task, data_dir, name="exp", seed=0, *extra):
    """An untrained run folder with config.yaml and best.pt, as `maskcls train` leaves it."""
    return untrained_run(project, task, [*TINY, f"data_dir={data_dir}", *extra], name, seed)


@pytest.fixture(scope="module")
def runs(sample_dataset, tmp_path_factory):
    project = tmp_path_factory.mktemp("runs")
    return {task: make_run(project, task, sample_dataset) for task in ("mask", "age", "gender")}


class LeftRight(nn.Module):
    """Logits from the mean of the left and right image halves: a flip swaps them."""

    def forward(self, images):
        half = images.shape[3] // 2
        left, right = images[..., :half].mean((1, 2, 3)), images[..., half:].mean((1, 2, 3))
        return torch.stack([2 * left, 2 * right, torch.zeros_like(left)], 1)


def test_tta_averages_the_probabilities_of_the_original_and_flipped_views():
    images = torch.zeros(4, 3, 8, 8)
    images[..., :4] = torch.tensor([1.0, 0.5, -0.5, 2.0])[:, None, None, None]  # left halves differ
    dataset = TensorDataset(images, torch.zeros(4, dtype=torch.long))
    engine = Engine(torch.device("cpu"), amp=False, channels_last=False)
    model = LeftRight()
    plain = predict_probs(model, dataset, engine, batch_size=3)
    both = predict_probs(model, dataset, engine, build_views(["flip"]), batch_size=3)
    with torch.no_grad():
        original = model(images).softmax(1).numpy()
        flipped = model(torch.flip(images, dims=[3])).softmax(1).numpy()
    assert not np.allclose(original, flipped)
    assert np.allclose(plain, original, atol=1e-6)
    assert np.allclose(both, (original + flipped) / 2, atol=1e-6)
    assert np.allclose(both.sum(1), 1)


def test_views_by_name():
    assert tta_views(load_config("mask", ["tta=[]"]), tta=True) == ("flip",)  # --tta always flips
    assert tta_views(load_config("mask", ["tta=[scale90]"]), tta=True) == ("flip", "scale90")
    assert tta_views(load_config("mask", ["tta=[scale90]"]), tta=False) == ()
    assert [name for name, _ in build_views(["flip", "scale90", "flip"])] == ["orig", "flip", "scale90"]
    images = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).reshape(2, 3, 10, 10)
    zoomed = dict(build_views(["scale80"]))["scale80"](images)
    assert zoomed.shape == images.shape and not torch.equal(zoomed, images)
    for bad in ("blur", "scale150", "scale0"):
        with pytest.raises(ConfigError, match=bad):
            build_views([bad])


def test_soft_and_hard_votes_on_hand_made_probabilities():
    probs = np.array([[[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]],
                      [[0.4, 0.5, 0.1], [0.1, 0.2, 0.7]],
                      [[0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]])  # (runs, images, classes)
    assert np.allclose(vote(probs, "soft"), probs.mean(0))
    assert vote(probs, "soft")[0].argmax() == 1
    hard = vote(probs, "hard")
    assert hard[0].argmax() == 1 and hard[1].argmax() == 2  # two of three runs vote 1, then 2
    assert np.allclose(hard.sum(1), 1)
    # image 0: votes 1 for class 0 and 2 for class 1, then the mean probability at weight 1/(runs+1)
    assert np.allclose(hard[0], (np.array([1, 2, 0]) + probs[:, 0].mean(0)) / 4)
    tie = np.array([[[0.9, 0.1]], [[0.4, 0.6]]])  # one vote each: the more confident class (0) wins
    assert vote(tie, "hard")[0].argmax() == 0
    # soft vote picks class 0 here although most runs say 1: the votes differ
    lopsided = np.array([[[0.99, 0.01]], [[0.45, 0.55]], [[0.45, 0.55]]])
    assert vote(lopsided, "soft")[0].argmax() == 0 and vote(lopsided, "hard")[0].argmax() == 1
    # a run that did not predict an image (NaN) does not count for it
    missing = np.array([[[0.7, 0.3]], [[np.nan, np.nan]]])
    assert np.allclose(vote(missing, "soft"), [[0.7, 0.3]])
    assert vote(missing, "hard")[0].argmax() == 0


def test_predict_eval_writes_probabilities_in_info_csv_order(runs, sample_dataset, tmp_path):
    result = run("predict", "age", runs["age"], sample_dataset, "--tta")
    assert result.exit_code == 0, result.output
    path = runs["age"] / "pred_eval_tta.csv"
    table = pd.read_csv(path, dtype={"ImageID": str})
    assert list(table.columns) == ["ImageID", "p0", "p1", "p2", "age_years"]  # configs/age.yaml: a year head
    assert table["ImageID"].tolist() == read_eval_images(sample_dataset)["ImageID"].tolist()
    assert np.allclose(table[["p0", "p1", "p2"]].sum(axis=1), 1, atol=1e-4)
    note = json.loads(path.with_suffix(".json").read_text())
    views = ["orig", "flip", *load_config("age").tta]  # --tta: the original, the flip and configs/age.yaml's views
    assert note["task"] == "age" and note["views"] == views and note["split"] == "eval"


def test_predict_val_holds_each_runs_people_with_competition_truth(runs, sample_dataset, tmp_path):
    tables = {}
    trained = {**runs, "age": make_run(tmp_path, "age", sample_dataset, "wide", 0, "age_bounds=30,65")}
    for task in ("mask", "age", "gender"):
        out = tmp_path / f"{task}.csv"
        result = run("predict", task, trained[task], sample_dataset, "--split", "val", "--out", out)
        assert result.exit_code == 0, result.output
        tables[task] = pd.read_csv(out)
    # the three specialists hold out the same people, so their tables line up image by image
    assert tables["mask"]["path"].tolist() == tables["age"]["path"].tolist() == tables["gender"]["path"].tolist()
    images = load_train(sample_dataset).assign(path=lambda t: t["path"].map(
        lambda p: str(p).removeprefix(str(sample_dataset) + "/")))
    held_out = images.set_index("path").loc[tables["age"]["path"]]
    assert images["person"].nunique() > held_out["person"].nunique() > 0
    assert list(tables["age"].columns) == ["path", "p0", "p1", "p2", "age_years", "target", "label"]
    # the age run trains with bounds (30, 65), but val truth is the competition's (30, 60)
    assert held_out["age"].between(60, 64).any()
    assert tables["age"]["target"].tolist() == age_band(held_out["age"].to_numpy(), DEFAULT_AGE_BOUNDS).tolist()
    mask, gender, age = decode(tables["age"]["label"].to_numpy())
    assert (tables["mask"]["target"] == mask).all() and (tables["gender"]["target"] == gender).all()
    assert (tables["age"]["target"] == age).all()
    result = run("combine", tmp_path / "mask.csv", tmp_path / "age.csv", tmp_path / "gender.csv")
    assert result.exit_code == 0, result.output
    assert "validation" in result.stdout and "18-class macro F1" in result.stdout


def test_two_runs_are_averaged(runs, sample_dataset, tmp_path):
    second = make_run(tmp_path, "mask", sample_dataset, "seed1", 1)
    outs = []
    for args in ([runs["mask"]], [second], [runs["mask"], second]):
        outs.append(tmp_path / f"{len(outs)}.csv")
        assert run("predict", "mask", *args, sample_dataset, "--out", outs[-1]).exit_code == 0
    one, two, both = (pd.read_csv(p).filter(like="p").to_numpy() for p in outs)
    assert not np.allclose(one, two)
    assert np.allclose(both, (one + two) / 2, atol=1e-5)


def test_predict_refuses_runs_of_another_task_and_val_without_held_out_people(runs, sample_dataset, tmp_path):
    result = run("predict", "mask", runs["age"], sample_dataset)
    assert result.exit_code == 1 and f"{runs['age']}: is a age run, not mask" in result.stderr
    everyone = make_run(tmp_path, "mask", sample_dataset, "all", 0, "val=none")
    result = run("predict", "mask", everyone, sample_dataset, "--split", "val")
    assert result.exit_code == 1 and f"{everyone}: trained on everyone (val=none)" in result.stderr
    result = run("predict", "mask", tmp_path / "nothing", sample_dataset)
    assert result.exit_code == 1 and f"{tmp_path / 'nothing'}: run folder does not exist" in result.stderr
    (tmp_path / "empty").mkdir()
    result = run("predict", "mask", tmp_path / "empty", sample_dataset)
    assert result.exit_code == 1 and f"{tmp_path / 'empty'}: not a maskcls run (no best.pt" in result.stderr


def test_submit_never_reads_eval_labels_and_follows_info_csv(runs, dataset_copy, tmp_path, monkeypatch):
    (dataset_copy / "eval" / "labels.csv").unlink()  # a submission must not need it
    project = tmp_path / "runs"
    for task, run_dir in runs.items():
        shutil.copytree(run_dir, project / task / "exp")
    monkeypatch.chdir(tmp_path)
    result = run("submit", "--tta", "--project", project, "--data-dir", dataset_copy)
    assert result.exit_code == 0, result.output
    submission = pd.read_csv(tmp_path / "submission.csv", dtype={"ImageID": str})
    assert submission["ImageID"].tolist() == read_eval_images(dataset_copy)["ImageID"].tolist()
    assert submission["ans"].between(0, 17).all()
    views = "+".join(["orig", "flip", *load_config("mask").tta])
    assert "bias: none" in result.stdout and f"views {views})" in result.stdout
    for task in ("mask", "age", "gender"):
        assert (project / task / "exp" / "pred_eval_tta.csv").is_file()
    # the same probabilities through `combine` give the same answers
    out = tmp_path / "again.csv"
    preds = [project / task / "exp" / "pred_eval_tta.csv" for task in ("mask", "age", "gender")]
    assert run("combine", *preds, "--out", out).exit_code == 0
    assert pd.read_csv(out)["ans"].tolist() == submission["ans"].tolist()


def test_submit_without_runs_says_what_to_do(tmp_path):
    result = run("submit", "--project", tmp_path / "runs")
    assert result.exit_code == 1
    assert f"{tmp_path / 'runs' / 'mask'}: no run with a best.pt" in result.stderr


# --------------------------------------------------------------- undecodable images, one crop per image

def _project_of(runs, tmp_path):
    project = tmp_path / "runs"
    for task, run_dir in runs.items():
        shutil.copytree(run_dir, project / task / "exp")
    return project


def test_one_undecodable_eval_image_fails_by_default_and_falls_back_when_asked(runs, dataset_copy, tmp_path,
                                                                               monkeypatch):
    import maskcls.submit as submit_module

    ids = read_eval_images(dataset_copy)["ImageID"].tolist()
    broken = dataset_copy / "eval" / "images" / ids[2]
    broken.write_bytes(b"half an upload")
    project, out = _project_of(runs, tmp_path), tmp_path / "submission.csv"

    result = run("submit", "--project", project, "--data-dir", dataset_copy, "--out", out)
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert f"{broken}: image does not decode" in result.stderr and not out.exists()

    batches = []  # the readable images are still predicted together, one dataset per task and run
    for name in ("predict_probs", "predict_probs_and_age"):  # the age run (a year head) reports ages too
        real = getattr(submit_module, name)
        monkeypatch.setattr(submit_module, name, lambda model, dataset, *a, real=real, **k:
                            batches.append(len(dataset)) or real(model, dataset, *a, **k))
    result = run("submit", "--project", project, "--data-dir", dataset_copy, "--out", out, "--on-bad-image", "fallback")
    assert result.exit_code == 0, result.output
    assert batches == [len(ids) - 1] * 3
    answers = pd.read_csv(out, dtype={"ImageID": str})
    assert answers["ImageID"].tolist() == ids  # every ImageID once, in info.csv order
    others = answers.drop(index=2)["ans"]
    assert answers.loc[2, "ans"] == others.value_counts().sort_index().idxmax()  # the most frequent other answer
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert any(str(broken) in line for line in warnings) and "1 eval image(s)" in result.stderr


def test_submit_crops_each_eval_image_once_for_all_three_tasks(sample_dataset, dataset_copy, tmp_path, monkeypatch):
    """Runs trained on MTCNN crops, no crop cache yet: MTCNN runs once per image, not once per task."""
    import maskcls.data.crop as crop_module

    detected = []

    def pick_faces(images, settings, detectors):  # no face anywhere: every crop is the centre fallback
        detected.extend(image.size for image in images)
        return [(None, 0)] * len(images)

    monkeypatch.setattr(crop_module, "create_detectors", lambda *a, **k: ["stand-in"])
    monkeypatch.setattr(crop_module, "pick_faces", pick_faces)
    project = tmp_path / "runs"
    for task in ("mask", "age", "gender"):
        make_run(project, task, dataset_copy, "exp", 0, "crop=mtcnn", "crop_detector=mtcnn")  # one detector
    eval_images = len(read_eval_images(dataset_copy))
    result = run("submit", "--tta", "--project", project, "--out", tmp_path / "submission.csv")
    assert result.exit_code == 0, result.output
    assert len(detected) == eval_images  # once each, not 3 x
    assert (dataset_copy.parent / ".maskcls_cache" / dataset_copy.name / "manifest.csv").is_file()
    detected.clear()
    assert run("submit", "--project", project, "--out", tmp_path / "again.csv").exit_code == 0
    assert detected == []  # the cache serves a second submission whole
