"""`maskcls evaluate` against scikit-learn, its refusals, and `maskcls compare` on hand-made submissions."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score
from typer.testing import CliRunner

from maskcls.cli import app
from maskcls.data import decode
from maskcls.evaluate import score

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(3)
    ids = [f"{i:04x}.jpg" for i in range(300)]
    truth = rng.integers(0, 18, len(ids))
    answers = np.where(rng.random(len(ids)) < 0.6, truth, rng.integers(0, 17, len(ids)))
    answers[answers == 17] = 16  # class 17 is never predicted: its F1 is 0, not undefined
    labels, submission = tmp_path / "labels.csv", tmp_path / "submission.csv"
    pd.DataFrame({"ImageID": ids, "ans": truth, "person": "x"}).to_csv(labels, index=False)
    order = rng.permutation(len(ids))  # a submission in another order still matches by ImageID
    pd.DataFrame({"ImageID": np.array(ids)[order], "ans": answers[order]}).to_csv(submission, index=False)
    return submission, labels, truth, answers


def test_evaluate_matches_scikit_learn(files, tmp_path):
    submission, labels, truth, answers = files
    result = run("evaluate", submission, labels)
    assert result.exit_code == 0, result.output
    expected = f1_score(truth, answers, labels=list(range(18)), average="macro", zero_division=0)
    printed = re.search(r"18-class macro F1 ([0-9.]+)\s+accuracy ([0-9.]+)", result.stdout)
    assert float(printed[1]) == pytest.approx(expected, abs=5e-5)
    assert float(printed[2]) == pytest.approx(accuracy_score(truth, answers), abs=5e-5)
    scores = score(truth, answers)
    assert scores["macro_f1"] == pytest.approx(expected)
    parts = zip(("mask", "gender", "age"), decode(truth), decode(answers), (3, 2, 3))
    for task, true_part, pred_part, classes in parts:
        assert scores["tasks"][task] == pytest.approx(f1_score(true_part, pred_part, labels=list(range(classes)),
                                                               average="macro", zero_division=0))
        assert f"{task} {scores['tasks'][task]:.4f}" in result.stdout
    per_class = scores["per_class"]
    assert per_class["f1"].tolist() == pytest.approx(
        f1_score(truth, answers, labels=list(range(18)), average=None, zero_division=0).tolist())
    assert per_class["support"].tolist() == np.bincount(truth, minlength=18).tolist()
    assert per_class.loc[17, "predicted"] == 0 and "not_wear/female/old" in result.stdout
    png = tmp_path / "submission_confusion.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and f"wrote {png}" in result.stdout
    assert scores["confusion"].sum() == len(truth) and np.trace(scores["confusion"]) == (truth == answers).sum()


def _edit(path, edit):
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(frame).to_csv(path, index=False)


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.iloc[1:], "1 missing"),
    (lambda t: pd.concat([t, t.iloc[:1].assign(ImageID="extra.jpg")]), "1 extra (e.g. extra.jpg)"),
    (lambda t: pd.concat([t, t.iloc[:1]]), "duplicated ImageID"),
    (lambda t: t.assign(ans=t["ans"].where(t.index != 4, "18")), "line 6: ans '18' is not a class"),
    (lambda t: t.rename(columns={"ans": "answer"}), "missing column(s) ans"),
])
def test_evaluate_refuses_a_submission_that_does_not_fit(files, edit, message):
    submission, labels, _, _ = files
    _edit(submission, edit)
    result = run("evaluate", submission, labels)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {submission}: ") and message in result.stderr


def test_compare_counts_differences_by_class_and_task(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    ids = [f"{i}.jpg" for i in range(6)]
    pd.DataFrame({"ImageID": ids, "ans": [0, 0, 4, 6, 17, 9]}).to_csv(a, index=False)
    # changes: 0 -> 1 (age), 4 -> 0 (gender and age), 6 -> 0 (mask); three rows the same
    pd.DataFrame({"ImageID": ids[::-1], "ans": [1, 0, 0, 0, 17, 9][::-1]}).to_csv(b, index=False)
    result = run("compare", a, b)
    assert result.exit_code == 0, result.output
    assert "3 of 6 answers differ (50.0%)" in result.stdout
    assert "differ by task: mask 1  gender 1  age 2" in result.stdout
    rows = {int(line.split()[0]): line.split()[2:] for line in result.stdout.splitlines()
            if re.match(r"^\s*\d+\s+\w+/", line)}
    assert rows[0] == ["2", "3", "1"] and rows[4] == ["1", "0", "1"] and rows[6] == ["1", "0", "1"]
    assert rows[1] == ["0", "1", "0"] and rows[17] == ["1", "1", "0"]
    pd.DataFrame({"ImageID": ids[:5], "ans": [0] * 5}).to_csv(b, index=False)
    result = run("compare", a, b)
    assert result.exit_code == 1 and f"{b}: does not cover the ImageIDs of {a}: 1 missing" in result.stderr


def test_bootstrap_resamples_whole_people_and_pairs_the_sets():
    from maskcls.metrics import bootstrap_macro_f1, fast_macro_f1, macro_f1

    rng = np.random.default_rng(1)
    targets = rng.integers(0, 18, 700)
    people = np.repeat(np.arange(100), 7)
    noisy = np.where(rng.random(700) < 0.4, rng.integers(0, 18, 700), targets)
    draws = bootstrap_macro_f1(targets, {"perfect": targets, "noisy": noisy, "same": noisy.copy()}, people, 18,
                               draws=200)
    assert np.all(draws["perfect"] == 1.0)
    np.testing.assert_array_equal(draws["noisy"], draws["same"])  # the same resamples for every set
    lo, hi = np.percentile(draws["noisy"], [2.5, 97.5])
    assert lo < macro_f1(targets, noisy, 18) < hi and hi - lo > 0.01
    assert fast_macro_f1(targets, noisy, 18) == pytest.approx(macro_f1(targets, noisy, 18))  # scikit-learn's
    assert fast_macro_f1(targets[:5], noisy[:5], 18) == pytest.approx(macro_f1(targets[:5], noisy[:5], 18))
    # two people, one all right and one all wrong: a resample holds both, or one of them twice
    two = bootstrap_macro_f1(np.array([0, 0, 1, 1]), {"p": np.array([0, 0, 0, 0])}, np.array([1, 1, 2, 2]), 2,
                             draws=100)["p"]
    assert set(np.round(two, 4)) <= {round(2 / 3 / 2, 4), 0.5, 0.0}
    assert len(set(np.round(two, 4))) >= 2


def test_a_bootstrapped_mean_resamples_the_same_people_as_the_f1_draws():
    from maskcls.metrics import bootstrap_macro_f1, bootstrap_mean

    # person 1: two photos, error 0; person 2: one photo answered wrong, error 3; person 3: three photos, error 1
    people, errors = np.array([1, 1, 2, 3, 3, 3]), np.array([0.0, 0.0, 3.0, 1.0, 1.0, 1.0])
    targets, preds = np.array([0, 0, 1, 0, 0, 0]), np.zeros(6, int)
    means = bootstrap_mean({"e": errors, "twice": 2 * errors}, people, draws=300, seed=5)
    f1 = bootstrap_macro_f1(targets, {"p": preds}, people, 2, draws=300, seed=5)["p"]
    np.testing.assert_allclose(means["twice"], 2 * means["e"])
    naive, with_two = [], []
    rng = np.random.default_rng(5)
    for _ in range(300):
        picked = rng.integers(0, 3, 3)
        rows = np.concatenate([np.flatnonzero(people == g + 1) for g in picked])
        naive.append(errors[rows].mean())
        with_two.append(1 in picked)
    np.testing.assert_allclose(means["e"], naive)  # the mean over the resampled people's photos
    np.testing.assert_array_equal(f1 < 0.5, with_two)  # the F1 draws resampled the same people (0.5 without 2)
    assert 0 < sum(with_two) < 300
