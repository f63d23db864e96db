"""The label audit on hand-made out-of-fold probabilities: planted person-level errors rank first."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from maskcls.audit import cleanlab_verdicts, run_audit
from maskcls.cli import app
from maskcls.data import load_fixes, load_train
from maskcls.data.sample import make_sample_dataset
from maskcls.tasks import get_task

FLIPPED, SWAPPED = "000004", "000009"  # the planted errors


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_sample_dataset(tmp_path_factory.mktemp("faces"), people=30, eval_people=1, size=(32, 40))


def oof_table(data, task: str, rng, truth) -> pd.DataFrame:
    """Out-of-fold probabilities of a decent model that sees the ``truth`` (task class per image), with the
    labels as the data has them, plus a few honest model mistakes (one image of a person, never all)."""
    images = load_train(data)
    classes = get_task(task).num_classes
    confidence = rng.uniform(0.6, 0.95, len(images))
    mistake = rng.random(len(images)) < 0.06
    probs = np.zeros((len(images), classes))
    for i, (true, conf) in enumerate(zip(truth, confidence)):
        others = [k for k in range(classes) if k != true]
        called = rng.choice(others) if mistake[i] else true
        probs[i] = (1 - conf) / (classes - 1)
        probs[i, called] = conf
    table = pd.DataFrame({"path": [os.path.relpath(p, data) for p in images["path"]]})
    for k in range(classes):
        table[f"p{k}"] = probs[:, k]
    table["target"] = images[get_task(task).label_column].to_numpy()
    table["label"] = images["label"].to_numpy()
    return table


@pytest.fixture(scope="module")
def oof_files(data, tmp_path_factory):
    """mask and gender oof.csv files in which FLIPPED's gender and SWAPPED's incorrect/normal labels are wrong."""
    folder, rng = tmp_path_factory.mktemp("oof"), np.random.default_rng(0)
    images = load_train(data)
    true_gender = np.where(images["person"] == FLIPPED, 1 - images["gender"], images["gender"])
    true_mask = images["mask"].to_numpy().copy()
    swap = (images["person"] == SWAPPED).to_numpy()
    true_mask[swap & (images["mask"] == 1).to_numpy()] = 2
    true_mask[swap & (images["mask"] == 2).to_numpy()] = 1
    files = {}
    for task, truth in (("gender", true_gender), ("mask", true_mask)):
        files[task] = folder / f"{task}_oof.csv"
        oof_table(data, task, rng, truth).to_csv(files[task], index=False)
    return files


def test_planted_person_errors_rank_first_and_are_suggested_as_fixes(data, oof_files, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in data.rglob("*")}
    result = run_audit(data, {"mask": oof_files["mask"], "gender": oof_files["gender"]}, tmp_path / "audit")
    suspects = pd.read_csv(tmp_path / "audit" / "audit.csv", dtype={"person": str})
    assert list(suspects.columns[:4]) == ["rank", "person", "kind", "score"]
    assert suspects["score"].is_monotonic_decreasing
    top_two = set(zip(suspects["person"][:2], suspects["kind"][:2]))
    assert top_two == {(FLIPPED, "gender"), (SWAPPED, "incorrect_normal_swap")}
    assert suspects["flagged"][:2].all()
    for kind in ("gender", "incorrect_normal_swap", "mask"):  # every person has a row of each kind
        assert (suspects["kind"] == kind).sum() == 30
    flip = suspects[(suspects["person"] == FLIPPED) & (suspects["kind"] == "gender")].iloc[0]
    assert flip["evidence"].startswith("7/7 images") and flip["call"] != flip["label"]
    assert (tmp_path / "audit" / "audit_sheet.png").stat().st_size > 0
    verdicts = pd.read_csv(tmp_path / "audit" / "audit_images.csv", dtype={"person": str})
    assert len(verdicts) == 2 * 30 * 7 and verdicts["quality"].is_monotonic_increasing
    assert verdicts[verdicts["person"] == FLIPPED].query("task == 'gender'")["issue"].sum() >= 5
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*")} == before  # the data is never edited
    # the suggestions read back through the label-fix reader, and applying them undoes the planted errors
    fixes = load_fixes(tmp_path / "audit" / "fixes_suggested.yaml")
    assert FLIPPED in fixes.gender and SWAPPED in fixes.swap_incorrect_normal
    images = load_train(data)
    fixed = load_train(data, fixes=tmp_path / "audit" / "fixes_suggested.yaml")
    flipped = (images["person"] == FLIPPED).to_numpy()
    assert (fixed["gender"][flipped] != images["gender"][flipped]).all()
    swapped = (images["person"] == SWAPPED).to_numpy()
    assert sorted(fixed["mask"][swapped]) == sorted(images["mask"][swapped])
    assert (fixed["mask"][swapped] != images["mask"][swapped]).sum() == 2
    assert len(result.format()) > 3


def test_cleanlab_flags_a_confidently_contradicted_label():
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.85, 0.15], [0.1, 0.9], [0.2, 0.8], [0.3, 0.7], [0.05, 0.95],
                      [0.7, 0.3]])
    quality, issue = cleanlab_verdicts(labels, probs)
    assert np.argmin(quality) == 6 and issue[6] and not issue[:3].any()


def test_audit_cli_needs_a_table_and_names_a_foreign_image(data, oof_files, tmp_path):
    result = CliRunner().invoke(app, ["audit", str(data)])
    assert result.exit_code == 1 and "at least one of --mask" in result.stderr
    table = pd.read_csv(oof_files["gender"])
    table.loc[0, "path"] = "train/images/nobody/mask1.jpg"
    table.to_csv(tmp_path / "bad.csv", index=False)
    result = CliRunner().invoke(app, ["audit", str(data), "--gender", str(tmp_path / "bad.csv")])
    assert result.exit_code == 1 and "nobody/mask1.jpg is not in" in result.stderr
    result = CliRunner().invoke(app, ["audit", str(data), "--gender", str(oof_files["gender"]), "--out",
                                      str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert f"{FLIPPED} gender" in result.stdout.splitlines()[2]


def test_swap_is_flagged_from_an_unsure_model_and_a_one_image_mistake_is_not():
    """The real mask models are unsure between incorrect and not wear: a swapped pair shifts both probabilities
    without turning both calls. A person with one confident mistake on one of the two images is no swap."""
    from maskcls.audit import TaskTable, mask_rows

    stems = ["mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal"]
    labels = [0, 0, 0, 0, 0, 1, 2]
    worn = [0.98, 0.01, 0.01]
    probs = {"swapped": [worn] * 5 + [[0.20, 0.42, 0.38], [0.20, 0.45, 0.35]],  # incorrect still called incorrect
             "mistake": [worn] * 5 + [[0.05, 0.05, 0.90], [0.02, 0.03, 0.95]],  # only the incorrect image is off
             "clean": [worn] * 5 + [[0.10, 0.80, 0.10], [0.05, 0.05, 0.90]]}
    images = pd.DataFrame([{"person": person, "label": label, "folder": person, "stem": stem}
                           for person in probs for stem, label in zip(stems, labels)])
    p = np.concatenate([np.array(v) for v in probs.values()])
    issue = np.zeros(len(images), bool)
    issue[[6, 12]] = True  # cleanlab: the swapped person's normal image, the mistaken incorrect image
    rows = {r["person"]: r for r in mask_rows(TaskTable("mask", images, p, p[np.arange(len(p)), labels * 3], issue))
            if r["kind"] == "incorrect_normal_swap"}
    assert rows["swapped"]["flagged"] and rows["swapped"]["score"] > 0
    assert not rows["mistake"]["flagged"] and rows["mistake"]["score"] < 0
    assert not rows["clean"]["flagged"]
    assert rows["swapped"]["score"] > rows["clean"]["score"]


def test_a_truncated_table_is_refused_naming_what_it_lacks(data, oof_files, tmp_path):
    table = pd.read_csv(oof_files["gender"])
    table[:-5].to_csv(tmp_path / "oof.csv", index=False)
    result = CliRunner().invoke(app, ["audit", str(data), "--gender", str(tmp_path / "oof.csv"), "--out",
                                      str(tmp_path / "audit")])
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert f"{tmp_path / 'oof.csv'}: covers {len(table) - 5} of the {len(table)} training images" in result.stderr
    assert not (tmp_path / "audit").exists()


def test_another_tasks_table_is_refused_with_or_without_its_cv_summary(data, tmp_path):
    images = load_train(data)
    cv_dir = tmp_path / "age_cv"
    cv_dir.mkdir()
    oof_table(data, "age", np.random.default_rng(1), images["age_band"]).to_csv(cv_dir / "oof.csv", index=False)
    result = CliRunner().invoke(app, ["audit", str(data), "--mask", str(cv_dir), "--out", str(tmp_path / "a")])
    assert result.exit_code == 1  # mask and age both have three classes: the target column tells them apart
    assert f"{cv_dir / 'oof.csv'}: its target column is not the mask class of its labels" in result.stderr
    (cv_dir / "cv.json").write_text('{"task": "age"}\n')
    result = CliRunner().invoke(app, ["audit", str(data), "--mask", str(cv_dir), "--out", str(tmp_path / "a")])
    assert result.exit_code == 1 and f"{cv_dir / 'oof.csv'}: holds age predictions (see cv.json), not mask" \
        in result.stderr
    assert not (tmp_path / "a").exists()


def test_an_output_folder_that_cannot_be_made_is_refused_before_the_work(data, oof_files, tmp_path):
    (tmp_path / "file").write_text("in the way")
    result = CliRunner().invoke(app, ["audit", str(data), "--gender", str(oof_files["gender"]), "--out",
                                      str(tmp_path / "file" / "audit")])
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert f"{tmp_path / 'file' / 'audit'}: cannot be made, {tmp_path / 'file'} is a file" in result.stderr
