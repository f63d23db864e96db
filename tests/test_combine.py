"""Three probability tables -> 18 classes: the arithmetic, info.csv order, every refusal, bias tuning."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from maskcls.cli import app
from maskcls.bias import Bias, load_bias, person_of, resolve_bias, save_bias, tune_bias
from maskcls.combine import combine
from maskcls.predictions import PredictionTable
from maskcls.data import DataError, decode, read_eval_images
from maskcls.metrics import macro_f1

runner = CliRunner()
CLASSES = {"mask": 3, "gender": 2, "age": 3}


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_hot(classes, count, confidence=0.9):
    probs = np.full((len(classes), count), (1 - confidence) / (count - 1))
    probs[np.arange(len(classes)), classes] = confidence
    return probs


def table(keys, probs, key="ImageID", label=None):
    frame = pd.DataFrame({key: keys, **{f"p{k}": probs[:, k] for k in range(probs.shape[1])}})
    if label is not None:
        frame["label"] = label
    return frame


def write_tables(folder, keys, labels, key="ImageID", order=None, with_label=False, notes=None):
    """mask/age/gender CSVs whose argmax gives ``labels``; each file in its own row order."""
    parts = dict(zip(("mask", "gender", "age"), decode(np.asarray(labels))))
    rng = np.random.default_rng(0)
    paths = {}
    for task, classes in parts.items():
        frame = table(keys, one_hot(classes, CLASSES[task]), key, labels if with_label else None)
        frame = frame.iloc[rng.permutation(len(frame))] if order is None else frame
        paths[task] = folder / f"{task}.csv"
        frame.to_csv(paths[task], index=False)
        if notes:
            paths[task].with_suffix(".json").write_text(json.dumps(notes[task]))
    return paths


@pytest.fixture
def eval_files(sample_dataset, tmp_path):
    info = read_eval_images(sample_dataset)
    labels = np.arange(len(info)) % 18
    return write_tables(tmp_path, info["ImageID"].tolist(), labels), info, labels


def test_combine_arithmetic_for_all_18_classes():
    triples = list(itertools.product(range(3), range(2), range(3)))  # mask, gender, age
    masks, genders, ages = (np.array(column) for column in zip(*triples))
    keys = np.array([f"{i}.jpg" for i in range(18)])
    predictions = {task: PredictionTable(None, task, "ImageID", keys, one_hot(classes, CLASSES[task]))
                   for task, classes in (("mask", masks), ("gender", genders), ("age", ages))}
    answers = combine(predictions)
    assert answers.tolist() == [m * 6 + g * 3 + a for m, g, a in triples]
    assert sorted(answers.tolist()) == list(range(18))


def test_submission_follows_info_csv_order_with_every_image_once(eval_files, sample_dataset, tmp_path):
    paths, info, labels = eval_files
    out = tmp_path / "sub" / "submission.csv"
    result = run("combine", paths["mask"], paths["age"], paths["gender"], "--data-dir", sample_dataset, "--out", out)
    assert result.exit_code == 0, result.output
    submission = pd.read_csv(out, dtype={"ImageID": str})
    assert list(submission.columns) == ["ImageID", "ans"]
    assert submission["ImageID"].tolist() == info["ImageID"].tolist()  # exactly info.csv's order, each once
    assert submission["ans"].tolist() == labels.tolist()
    assert "bias: none" in result.stdout


def test_combine_reads_the_data_folder_from_the_note(eval_files, sample_dataset, tmp_path):
    paths, info, labels = eval_files
    for path in paths.values():
        path.with_suffix(".json").write_text(json.dumps({"task": path.stem, "data_dir": str(sample_dataset)}))
    out = tmp_path / "s.csv"
    result = run("combine", paths["mask"], paths["age"], paths["gender"], "--out", out)
    assert result.exit_code == 0, result.output
    assert pd.read_csv(out)["ans"].tolist() == labels.tolist()


def _drop_row(path):
    frame = pd.read_csv(path, dtype={"ImageID": str})
    frame.iloc[1:].to_csv(path, index=False)


def _add_row(path):
    frame = pd.read_csv(path, dtype={"ImageID": str})
    extra = frame.iloc[:1].assign(ImageID="stranger.jpg")
    pd.concat([frame, extra]).to_csv(path, index=False)


def _duplicate_row(path):
    frame = pd.read_csv(path, dtype={"ImageID": str})
    pd.concat([frame, frame.iloc[:1]]).to_csv(path, index=False)


def _not_probabilities(path):
    frame = pd.read_csv(path, dtype={"ImageID": str})
    frame.loc[2, "p0"] = 3.0
    frame.to_csv(path, index=False)


def _drop_class_column(path):
    pd.read_csv(path, dtype={"ImageID": str}).drop(columns="p2").to_csv(path, index=False)


@pytest.mark.parametrize("task,edit,message", [
    ("age", _drop_row, "lacks 1 image(s) the other tables hold"),
    ("gender", _add_row, "holds 1 image(s) the other tables lack (e.g. stranger.jpg)"),
    ("mask", _duplicate_row, "duplicated ImageID"),
    ("age", _not_probabilities, "are not probabilities"),
    ("age", _drop_class_column, "a age prediction has 3"),
])
def test_refuses_bad_inputs_naming_the_file(eval_files, sample_dataset, task, edit, message):
    paths, _, _ = eval_files
    edit(paths[task])
    result = run("combine", paths["mask"], paths["age"], paths["gender"], "--data-dir", sample_dataset)
    assert result.exit_code == 1
    assert message in result.stderr and str(paths[task]) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_refuses_swapped_files_by_class_count_and_by_note(eval_files, sample_dataset):
    paths, _, _ = eval_files
    result = run("combine", paths["mask"], paths["gender"], paths["age"], "--data-dir", sample_dataset)
    assert result.exit_code == 1 and f"{paths['gender']}: class columns p0,p1; a age prediction has 3" in result.stderr
    # mask and age both have 3 classes: only the note beside the CSV can tell them apart
    paths["age"].with_suffix(".json").write_text(json.dumps({"task": "age"}))
    result = run("combine", paths["age"], paths["mask"], paths["gender"], "--data-dir", sample_dataset)
    assert result.exit_code == 1 and f"{paths['age']}: holds age predictions" in result.stderr


def test_refuses_predictions_that_do_not_cover_info_csv(sample_dataset, tmp_path):
    info = read_eval_images(sample_dataset)
    keys = info["ImageID"].tolist()[:-2]  # all three agree, but two info.csv images are missing
    paths = write_tables(tmp_path, keys, np.zeros(len(keys), dtype=int))
    result = run("combine", paths["mask"], paths["age"], paths["gender"], "--data-dir", sample_dataset)
    assert result.exit_code == 1
    assert f"{paths['mask']}: does not cover {sample_dataset / 'eval' / 'info.csv'}: 2 ImageID(s)" in result.stderr


def test_refuses_missing_files_mixed_splits_and_tuning_on_eval(eval_files, sample_dataset, tmp_path):
    paths, info, labels = eval_files
    result = run("combine", tmp_path / "nope.csv", paths["age"], paths["gender"])
    assert result.exit_code == 1 and f"{tmp_path / 'nope.csv'}: prediction file does not exist" in result.stderr
    val_age = tmp_path / "val_age.csv"
    table(info["ImageID"].tolist(), one_hot(decode(labels)[2], 3), key="path").to_csv(val_age, index=False)
    result = run("combine", paths["mask"], val_age, paths["gender"], "--data-dir", sample_dataset)
    assert result.exit_code == 1 and f"{val_age}: holds val predictions" in result.stderr
    result = run("combine", paths["mask"], paths["age"], paths["gender"], "--data-dir", sample_dataset, "--tune")
    assert result.exit_code == 1 and "--tune needs validation predictions" in result.stderr


def test_refuses_val_tables_whose_labels_disagree(tmp_path):
    keys = [f"train/images/p{i}/mask1.jpg" for i in range(12)]
    labels = np.arange(12) % 18
    paths = write_tables(tmp_path, keys, labels, key="path", with_label=True)
    frame = pd.read_csv(paths["gender"])
    frame.loc[0, "label"] = (frame.loc[0, "label"] + 1) % 18
    frame.to_csv(paths["gender"], index=False)
    result = run("combine", paths["mask"], paths["age"], paths["gender"])
    assert result.exit_code == 1 and f"{paths['gender']}: label of" in result.stderr


def rare_old_band(n=300, seed=0):
    """Val predictions where mask and gender are right but the old band (age 2) is never the argmax."""
    rng = np.random.default_rng(seed)
    mask, gender = rng.integers(0, 3, n), rng.integers(0, 2, n)
    age = rng.choice(3, n, p=[0.5, 0.4, 0.1])
    age_probs = np.where(age[:, None] == np.arange(3), 0.7, 0.15)
    old = age == 2
    age_probs[old] = [0.05, 0.55, 0.40]  # the model ranks "old" second for the truly old ...
    some_middle = (age == 1) & (rng.random(n) < 0.3)
    age_probs[some_middle] = [0.05, 0.75, 0.20]  # ... and a little lower for some middle-aged
    labels = mask * 6 + gender * 3 + age
    keys = np.array([f"train/images/{i:04d}/mask1.jpg" for i in range(n)])
    predictions = {"mask": PredictionTable(None, "mask", "path", keys, one_hot(mask, 3), labels),
                   "gender": PredictionTable(None, "gender", "path", keys, one_hot(gender, 2), labels),
                   "age": PredictionTable(None, "age", "path", keys, age_probs, labels)}
    return predictions, labels


def probs_of(predictions: dict) -> dict:
    return {task: p.probs for task, p in predictions.items()}


def test_bias_tuning_raises_macro_f1_when_the_rare_class_is_under_predicted():
    predictions, labels = rare_old_band()
    assert not (combine(predictions) % 3 == 2).any()  # the plain argmax never says "old"
    bias, before, after = tune_bias(probs_of(predictions), labels)
    assert after > before + 0.1
    assert after == pytest.approx(macro_f1(labels, combine(predictions, bias.values), 18))
    assert bias.values["age"][2] - bias.values["age"][1] > np.log(0.55 / 0.40)  # old now beats 30-old for the old
    assert (bias.values["mask"] == 0).all() and (bias.values["gender"] == 0).all()  # already perfect: untouched



def test_bias_tuning_with_groups_refuses_a_gain_that_one_person_carries():
    """One person's 7 old images would gain from an "old" offset that wrongs 3 middle-aged people."""
    people = ["a"] * 7 + [f"b{i}" for i in range(3)] + [f"c{i:02d}" for i in range(20)]
    age = np.array([2] * 7 + [1] * 3 + [0] * 20)
    age_probs = np.array([[0.05, 0.55, 0.40]] * 7 + [[0.05, 0.52, 0.43]] * 3 + [[0.8, 0.1, 0.1]] * 20)
    zeros = np.zeros(len(age), dtype=int)
    labels = age  # mask 0, gender 0
    keys = np.array([f"train/images/{person}/mask{i % 5 + 1}.jpg" for i, person in enumerate(people)])
    predictions = {"mask": PredictionTable(None, "mask", "path", keys, one_hot(zeros, 3), labels),
                   "gender": PredictionTable(None, "gender", "path", keys, one_hot(zeros, 2), labels),
                   "age": PredictionTable(None, "age", "path", keys, age_probs, labels)}
    plain, before, after = tune_bias(probs_of(predictions), labels)
    assert after > before and plain.values["age"][2] > plain.values["age"][1]  # the offset helps overall ...
    guarded, before, after = tune_bias(probs_of(predictions), labels, groups=[person_of(k) for k in keys])
    assert after == before and not guarded.values["age"].any()  # ... but not the half without person "a"

def test_tune_stores_the_bias_beside_the_runs_and_submit_style_combine_applies_it(tmp_path):
    predictions, labels = rare_old_band(120)
    runs = {task: [str(tmp_path / "runs" / task / "exp")] for task in ("mask", "gender", "age")}
    paths = {}
    for task, p in predictions.items():
        paths[task] = tmp_path / f"val_{task}.csv"
        table(p.keys, p.probs, "path", labels).to_csv(paths[task], index=False)
        paths[task].with_suffix(".json").write_text(json.dumps({"task": task, "runs": runs[task], "views": ["orig"]}))
    result = run("combine", paths["mask"], paths["age"], paths["gender"], "--tune")
    assert result.exit_code == 0, result.output
    stored = tmp_path / "runs" / "bias.yaml"
    assert f"wrote {stored}" in result.stdout and "18-class macro F1" in result.stdout
    saved = yaml.safe_load(stored.read_text())
    assert saved["val_macro_f1"]["after"] > saved["val_macro_f1"]["before"]
    assert saved["runs"] == runs and len(saved["bias"]["age"]) == 3
    # a later combine of the same runs picks the stored bias up and says so; other runs do not
    bias, line = resolve_bias(None, runs)
    assert bias is not None and str(stored) in line and "->" in line
    other = {**runs, "age": [str(tmp_path / "runs" / "age" / "exp2")]}
    bias, line = resolve_bias(None, other)
    assert bias is None and "tuned on other runs" in line
    assert resolve_bias("none", runs) == (None, "bias: none")
    assert resolve_bias(str(stored), other)[0] is not None  # explicit --bias applies anyway


def test_bad_bias_files_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "bias.yaml"
    save_bias(Bias({"mask": np.zeros(3), "gender": np.zeros(2), "age": np.array([0, 0, 1.5])}), path)
    assert load_bias(path).values["age"].tolist() == [0, 0, 1.5]
    path.write_text("bias: {mask: [0, 0, 0], gender: [0, 0], age: [0, 1]}\n")
    with pytest.raises(DataError, match=f"{path}: bias.age must be 3 numbers"):
        load_bias(path)
    with pytest.raises(DataError, match="does not exist"):
        load_bias(tmp_path / "missing.yaml")


@pytest.mark.parametrize("short", ["mask", "age", "gender"])
def test_the_table_missing_a_row_is_the_one_named(eval_files, sample_dataset, tmp_path, short):
    """Whichever of the three lacks an image, the message names that file (the first table included)."""
    paths, info, _ = eval_files
    dropped = info["ImageID"].iloc[3]
    edit = pd.read_csv(paths[short], dtype={"ImageID": str})
    edit[edit["ImageID"] != dropped].to_csv(paths[short], index=False)
    result = run("combine", paths["mask"], paths["age"], paths["gender"], "--data-dir", sample_dataset)
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"error: {paths[short]}: ") and dropped in result.stderr
    for other in set(paths) - {short}:
        assert not result.stderr.startswith(f"error: {paths[other]}")
