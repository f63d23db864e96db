"""Seed ensembles: `train` with ensemble=N trains N members (seed + k), resumes an interrupted one, and the
folder stands for its members wherever runs are loaded."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY_TRAIN, cli, truncate

from maskcls.config import ConfigError, load_config
from maskcls.cv import run_cv
from maskcls.data import DataError
from maskcls.ensemble import train_ensemble
from maskcls.runs import expand_runs, run_home
from maskcls.submit import load_run, newest_run, predict_run

@pytest.fixture(scope="module")
def gender_ensemble(tiny_faces, tmp_path_factory):
    """``maskcls train gender ensemble=2`` of one epoch each: (project, ensemble folder)."""
    project = tmp_path_factory.mktemp("runs")
    result = cli("train", "gender", *TINY_TRAIN, "ensemble=2", "seed=7", f"data_dir={tiny_faces}", f"project={project}")
    assert result.exit_code == 0, result.output
    return project, project / "gender" / "exp"


def saved(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_members_train_with_consecutive_seeds_and_their_own_validation_people(gender_ensemble, tiny_faces):
    project, folder = gender_ensemble
    assert saved(folder / "config.yaml")["ensemble"] == 2 and saved(folder / "config.yaml")["seed"] == 7
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["member0", "member1"]
    assert [saved(folder / f"member{k}" / "config.yaml")["seed"] for k in range(2)] == [7, 8]
    vals = [set(predict_run(load_run(folder / f"member{k}"), "val", tiny_faces)["path"]) for k in range(2)]
    assert vals[0] and vals[1] and vals[0] != vals[1]  # the seed draws the val people too
    assert expand_runs([folder]) == [folder / "member0", folder / "member1"]
    assert run_home(folder / "member1") == folder.resolve()
    assert newest_run(project, "gender") == folder


def test_predict_and_submit_vote_the_members(gender_ensemble, tiny_faces, tmp_path):
    project, folder = gender_ensemble
    out = tmp_path / "ens.csv"
    result = cli("predict", "gender", folder, tiny_faces, "--out", out)
    assert result.exit_code == 0 and "2 run(s)" in result.output, result.output
    each = [predict_run(load_run(folder / f"member{k}"), "eval", tiny_faces)[["p0", "p1"]].to_numpy() for k in range(2)]
    assert not np.allclose(each[0], each[1])  # two different models, so the vote is not a copy of one
    assert np.allclose(pd.read_csv(out)[["p0", "p1"]], np.mean(each, axis=0), atol=1e-5)
    assert json.loads(out.with_suffix(".json").read_text())["runs"] == [
        str((folder / f"member{k}").resolve()) for k in range(2)]


def test_the_same_command_skips_finished_members_and_redoes_a_missing_one(gender_ensemble, tiny_faces, capsys):
    project, folder = gender_ensemble
    again = project / "again"
    shutil.copytree(folder, again / "gender" / "ens")
    kept = (again / "gender" / "ens" / "member0" / "best.pt").stat().st_mtime_ns
    shutil.rmtree(again / "gender" / "ens" / "member1")
    with pytest.raises(DataError, match="member 1 of 2 is missing; finish it with maskcls train --resume"):
        expand_runs([again / "gender" / "ens"])
    config = load_config("gender", [*TINY_TRAIN, "ensemble=2", "seed=7", f"data_dir={tiny_faces}", f"project={again}",
                                    "name=ens"])
    assert train_ensemble(config) == again / "gender" / "ens"
    out = capsys.readouterr().out
    assert "member 0/2 (seed 7): finished (skipped)" in out and "member 1/2 (seed 8): new" in out
    assert (again / "gender" / "ens" / "member0" / "best.pt").stat().st_mtime_ns == kept
    assert len(expand_runs([again / "gender" / "ens"])) == 2
    before = (again / "gender" / "ens" / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="lr="):  # other settings: not a resume of this ensemble
        train_ensemble(load_config("gender", [*TINY_TRAIN, "ensemble=2", "seed=7", f"data_dir={tiny_faces}",
                                              f"project={again}", "name=ens", "lr=1e-2"]))
    assert (again / "gender" / "ens" / "config.yaml").read_text() == before  # the refused command wrote nothing


def test_an_ensemble_never_trains_into_a_single_runs_folder(gender_ensemble, tiny_faces):
    project, folder = gender_ensemble
    single = folder / "member0"  # a run folder with last.pt
    config = load_config("gender", [*TINY_TRAIN, "ensemble=2", f"data_dir={tiny_faces}", f"project={folder.parent.parent}",
                                    f"name={folder.name}/member0"])
    with pytest.raises(ConfigError, match="member0: holds a single run"):
        train_ensemble(config)
    assert not (single / "member0").exists()


def test_resume_on_a_moved_ensemble_folder_finishes_it_there(gender_ensemble, tmp_path):
    project, folder = gender_ensemble
    moved = tmp_path / "elsewhere" / "gender" / "mine"
    shutil.copytree(folder, moved)
    shutil.rmtree(moved / "member1")
    result = cli("train", "gender", "--resume", moved)
    assert result.exit_code == 0, result.output
    assert "member 1/2 (seed 8): new" in result.output and f"run folder: {moved}" in result.output
    assert (moved / "member1" / "best.pt").is_file() and not (project / "gender" / "mine").exists()
    assert saved(moved / "member1" / "config.yaml")["seed"] == 8


def test_cv_trains_one_run_per_fold_whatever_the_ensemble(tiny_faces, tmp_path):
    config = load_config("mask", [*TINY_TRAIN, "folds=2", "ensemble=3", f"data_dir={tiny_faces}", f"project={tmp_path}"])
    result = run_cv(config)
    assert [saved(Path(f["run"]) / "config.yaml")["ensemble"] for f in result.folds] == [1, 1]
    assert not any(Path(f["run"], "member0").exists() for f in result.folds)


def test_ensemble_must_be_at_least_one():
    with pytest.raises(ConfigError, match="ensemble=0: must be at least 1"):
        load_config("gender", ["ensemble=0"])


def test_resume_checks_the_task_and_each_finished_members_checkpoint(gender_ensemble, tmp_path):
    project, folder = gender_ensemble
    result = cli("train", "mask", "--resume", folder)
    assert result.exit_code == 1 and f"{folder}: is a gender run, not mask" in result.stderr
    result = cli("train", "mask", "--resume", folder / "member0")
    assert result.exit_code == 1 and f"{folder / 'member0'}: is a gender run, not mask" in result.stderr
    copy = Path(shutil.copytree(folder, tmp_path / "gender" / "ens"))
    truncate(copy / "member1" / "best.pt")
    result = cli("train", "gender", "--resume", copy)
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert f"checkpoint {copy / 'member1' / 'best.pt'} is damaged (truncated?); remove {copy / 'member1'}" \
        in result.stderr
    assert "(skipped)" not in result.stdout


def test_an_ensemble_that_fails_before_its_first_member_leaves_no_folder(tmp_path):
    project = tmp_path / "runs"
    result = cli("train", "gender", *TINY_TRAIN, "ensemble=2", f"data_dir={tmp_path / 'nothing'}", f"project={project}")
    assert result.exit_code == 1 and "nothing" in result.stderr
    assert not project.exists()  # not even a folder holding only config.yaml
