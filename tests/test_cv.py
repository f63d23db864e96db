"""Cross-validation: every fold trained into one folder, out-of-fold predictions, resume, CV folders as runs."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_TRAIN, cli, untrained_run
from maskcls.checkpoint import save_checkpoint
from maskcls.config import ConfigError, load_config
from maskcls.cv import run_cv, run_status, write_oof
from maskcls.data import DataError, fold_of_people, load_train
from maskcls.runs import expand_runs, run_home
from maskcls.submit import load_run, newest_run, predict_run

@pytest.fixture(scope="module")
def mask_cv(tiny_faces, tmp_path_factory):
    """``maskcls cv mask`` with three folds of one epoch: (config, result)."""
    project = tmp_path_factory.mktemp("runs")
    config = load_config("mask", [*TINY_TRAIN, f"data_dir={tiny_faces}", f"project={project}"])
    return config, run_cv(config)


def test_cv_trains_every_fold_and_predicts_each_image_by_the_fold_that_held_it_out(mask_cv, tiny_faces):
    config, result = mask_cv
    cv_dir = result.cv_dir
    assert cv_dir == Path(config.project) / "mask" / "cv"
    for k in range(3):
        for name in ("config.yaml", "best.pt", "last.pt", "results.csv"):
            assert (cv_dir / f"fold{k}" / name).is_file(), (k, name)
    oof = pd.read_csv(cv_dir / "oof.csv")
    assert list(oof.columns) == ["path", "p0", "p1", "p2", "target", "label", "fold"]
    images = load_train(tiny_faces)
    relative = images["path"].map(lambda p: os.path.relpath(p, tiny_faces))
    assert sorted(oof["path"]) == sorted(relative)  # every training image, once
    fold_of = dict(zip(relative, images["person"].map(fold_of_people(images, 3, config.seed))))
    assert (oof["fold"] == oof["path"].map(fold_of)).all()
    for k in range(3):  # the probabilities of fold k's people are fold k's own val predictions
        own = predict_run(load_run(cv_dir / f"fold{k}"), "val", tiny_faces).set_index("path")
        rows = oof[oof["fold"] == k].set_index("path")
        assert sorted(rows.index) == sorted(own.index)
        assert np.allclose(rows[["p0", "p1", "p2"]], own.loc[rows.index, ["p0", "p1", "p2"]], atol=1e-5)
    summary = json.loads((cv_dir / "cv.json").read_text())
    assert [f["fold"] for f in summary["folds"]] == [0, 1, 2]
    assert sum(f["images"] for f in summary["folds"]) == len(oof)
    assert 0 <= summary["oof_f1"] <= 1 and summary["oof_f1"] == round(result.oof_f1, 4)
    note = json.loads((cv_dir / "oof.json").read_text())
    assert note["split"] == "val" and len(note["runs"]) == 3


def test_rerunning_skips_finished_folds_and_redoes_a_missing_one(mask_cv, capsys):
    config, result = mask_cv
    times = {k: (result.cv_dir / f"fold{k}" / "best.pt").stat().st_mtime_ns for k in range(3)}
    shutil.rmtree(result.cv_dir / "fold1")
    again = run_cv(config)
    assert [f["status"] for f in again.folds] == ["finished", "new", "finished"]
    assert (result.cv_dir / "fold0" / "best.pt").stat().st_mtime_ns == times[0]
    assert (result.cv_dir / "fold1" / "best.pt").is_file()
    assert "fold 0/3: finished (skipped)" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="lr="):  # other settings: not a resume of this CV
        run_cv(load_config("mask", [*TINY_TRAIN, f"data_dir={config.data_dir}", f"project={config.project}", "lr=1e-2"]))


def test_a_fold_with_fewer_epochs_than_asked_is_unfinished(tmp_path):
    config = load_config("mask", [*TINY_TRAIN, "epochs=3", "name=cv/fold0"])
    run_dir = tmp_path / "fold0"
    assert run_status(run_dir, config) == "new"
    save_checkpoint(run_dir / "last.pt", epoch=0, config=config.to_dict())
    assert run_status(run_dir, config) == "unfinished"
    save_checkpoint(run_dir / "last.pt", epoch=2, config=config.to_dict())
    save_checkpoint(run_dir / "best.pt", epoch=1, config=config.to_dict())
    assert run_status(run_dir, config) == "finished"


def test_cv_folders_expand_into_their_folds_and_count_as_the_newest_run(mask_cv, tmp_path):
    config, result = mask_cv
    folds = [result.cv_dir / f"fold{k}" for k in range(3)]
    single = untrained_run(tmp_path, "mask", TINY_TRAIN, name="exp")
    assert expand_runs([result.cv_dir, single]) == [*folds, single]
    assert run_home(folds[1]) == result.cv_dir.resolve() and run_home(single) == single.resolve()
    project = tmp_path / "project"
    shutil.copytree(single, project / "mask" / "old")
    os.utime(project / "mask" / "old" / "best.pt", (1, 1))
    shutil.copytree(result.cv_dir, project / "mask" / "cv")
    assert newest_run(project, "mask") == project / "mask" / "cv"
    shutil.rmtree(project / "mask" / "cv" / "fold2")
    with pytest.raises(DataError, match="fold 2 of 3 is missing"):
        expand_runs([project / "mask" / "cv"])


def test_predict_on_a_cv_folder_is_the_mean_of_its_folds(mask_cv, tiny_faces, tmp_path):
    config, result = mask_cv
    out, hard = tmp_path / "cv.csv", tmp_path / "hard.csv"
    assert cli("predict", "mask", result.cv_dir, tiny_faces, "--out", out).exit_code == 0
    assert cli("predict", "mask", result.cv_dir, tiny_faces, "--out", hard, "--vote", "hard").exit_code == 0
    each = [predict_run(load_run(result.cv_dir / f"fold{k}"), "eval", tiny_faces) for k in range(3)]
    mean = np.mean([t[["p0", "p1", "p2"]].to_numpy() for t in each], axis=0)
    assert np.allclose(pd.read_csv(out)[["p0", "p1", "p2"]], mean, atol=1e-5)
    assert json.loads(out.with_suffix(".json").read_text())["runs"] == [
        str((result.cv_dir / f"fold{k}").resolve()) for k in range(3)]
    assert json.loads(hard.with_suffix(".json").read_text())["vote"] == "hard"


def untrained_cv(project, task, data_dir):
    """A CV folder of untrained fold runs and its oof.csv, as `maskcls cv` leaves them (no training)."""
    overrides = [*TINY_TRAIN, f"data_dir={data_dir}"]
    for k in range(3):
        untrained_run(project, task, [*overrides, f"fold={k}"], name=f"cv/fold{k}", seed=k)
    config = load_config(task, [*overrides, f"project={project}"])
    write_oof(project / task / "cv", config, ["new"] * 3)
    return project / task / "cv"


def test_submit_with_cv_folders_averages_folds_and_applies_the_bias_tuned_on_their_oof(tiny_faces, tmp_path):
    project = tmp_path / "runs"
    cvs = {task: untrained_cv(project, task, tiny_faces) for task in ("mask", "age", "gender")}
    oof = [cvs[task] / "oof.csv" for task in ("mask", "age", "gender")]
    tuned = cli("combine", *oof, "--tune")
    assert tuned.exit_code == 0, tuned.output
    images = len(load_train(tiny_faces))
    assert f"tuned bias on {images} validation images" in tuned.stdout  # every training person, not one fold
    assert (project / "bias.yaml").is_file()
    sub = tmp_path / "sub.csv"
    result = cli("submit", "--project", project, "--out", sub)  # the newest run of each task: its CV folder
    assert result.exit_code == 0, result.output
    assert f"bias: {project / 'bias.yaml'}" in result.stdout
    assert not (cvs["mask"] / "fold0" / "pred_eval_soft3.csv").exists()  # the folds' vote is the CV folder's
    table = pd.read_csv(cvs["mask"] / "pred_eval_soft3.csv")
    each = [predict_run(load_run(cvs["mask"] / f"fold{k}"), "eval", tiny_faces) for k in range(3)]
    assert np.allclose(table[["p0", "p1", "p2"]], np.mean([t[["p0", "p1", "p2"]] for t in each], axis=0), atol=1e-5)
    one_fold = cli("submit", "--mask", cvs["mask"] / "fold0", "--age", cvs["age"], "--gender", cvs["gender"],
                   "--project", project, "--out", sub)
    assert one_fold.exit_code == 0 and "tuned on other runs" in one_fold.stdout


def test_cv_refuses_val_none(tiny_faces, tmp_path):
    result = cli("cv", "mask", *TINY_TRAIN, f"data_dir={tiny_faces}", f"project={tmp_path}", "val=none")
    assert result.exit_code == 1 and "needs val=fold" in result.stderr
