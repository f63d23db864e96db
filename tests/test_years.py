"""age_target=years: DLDL targets over single years, the year-to-band sum, training, predict, export, evaluate."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from maskcls.cli import app
from maskcls.config import ConfigError, load_config
from maskcls.data.sample import make_sample_dataset
from maskcls.engine import fit
from maskcls.models import build_model
from maskcls.predictions import predict_runs
from maskcls.tasks import get_task
from maskcls.years import YearsModel, YearsToBands, year_band_matrix, year_distribution, year_targets

TINY = ["backbone=test_efficientnet", "pretrained=none", "crop=none", "warmup_epochs=1",
        "img_size=32", "batch_size=16", "workers=0", "folds=3", "epochs=1"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_sample_dataset(tmp_path_factory.mktemp("faces"), people=15, eval_people=2, size=(48, 64))


def logits_at(year: int, years: int = 101, groups: int = 1, group: int = 0) -> torch.Tensor:
    """Year logits with (almost) all the mass at ``year`` of ``group``."""
    logits = torch.full((1, groups * years), -50.0)
    logits[0, group * years + year] = 50.0
    return logits


@pytest.mark.parametrize("bounds, band", [((30, 60), 0), ((29, 58), 1), ((25, 29), 2), ((20, 40), 1)])
def test_all_mass_at_29_lands_in_the_band_of_the_bounds(bounds, band):
    probs = YearsToBands(1, bounds, 100)(logits_at(29)).exp()[0]
    assert probs.argmax().item() == band and probs[band].item() == pytest.approx(1.0, abs=1e-6)


def test_band_sums_of_a_spread_distribution_and_each_group_keeps_its_own():
    head = YearsToBands(2, (30, 60), 100)
    logits = torch.full((1, 202), -50.0)
    logits[0, [101 + 28, 101 + 29, 101 + 30, 101 + 61]] = 0.0  # four equal years, all in the second group
    probs = head(logits).exp()[0]
    assert torch.allclose(probs, torch.tensor([0, 0, 0, 0.5, 0.25, 0.25]), atol=1e-6)
    assert head.expected_age(logits).item() == pytest.approx((28 + 29 + 30 + 61) / 4, abs=1e-4)
    matrix = year_band_matrix((30, 59), 100)
    assert matrix.sum(1).tolist() == [1] * 101 and matrix[:30, 0].all() and matrix[59:, 2].all()


@pytest.mark.parametrize("age, sigma", [(29, 3.0), (0, 2.0), (100, 2.0), (45, 0.0), (7, 0.5)])
def test_dldl_target_sums_to_one_with_its_mode_at_the_true_age(age, sigma):
    target = year_distribution([age], 100, sigma)[0]
    assert target.shape == (101,) and target.sum() == pytest.approx(1.0, abs=1e-5)
    assert target.argmax() == age and (target >= 0).all()
    if sigma > 0:  # symmetric around the age where both sides exist
        assert target[age - 1] == pytest.approx(target[age + 1]) if 0 < age < 100 else True
    else:
        assert target[age] == 1.0


def test_ages_past_age_max_count_as_age_max_and_joint_targets_fill_only_their_group():
    assert year_distribution([117], 100, 2.0)[0].argmax() == 100
    joint = get_task("joint")
    images = pd.DataFrame({"label": [0 * 6 + 1 * 3 + 1, 2 * 6 + 0 * 3 + 2], "age_band": [1, 2], "age": [40, 70]})
    targets = year_targets(images["age"], (images["label"] - images["age_band"]).to_numpy(), 6, 100, 3.0)
    assert targets.shape == (2, 606) and np.allclose(targets.sum(1), 1.0)
    assert targets[0].argmax() == 1 * 101 + 40 and targets[1].argmax() == 4 * 101 + 70  # groups 1 and 4
    cfg = load_config("joint", ["age_target=years", "age_sigma=3"])
    assert np.array_equal(joint.train_targets(images, cfg), targets)


def test_config_checks_the_years_target():
    assert load_config("age", ["age_target=years"]).age_max == 100
    for overrides, message in [(["age_target=decade"], "age_target"), (["age_target=years", "age_max=50"], "age_max"),
                               (["age_target=years", "loss=ce_f1"], "F1"),
                               (["age_target=years", "class_weights=balanced"], "sampler=weighted")]:
        with pytest.raises(ConfigError, match=message):
            load_config("age", overrides)
    with pytest.raises(ConfigError, match="no age"):
        load_config("gender", ["age_target=years"])


def test_years_model_gives_year_logits_in_training_and_bands_in_eval():
    model = build_model(load_config("joint", [*TINY, "age_target=years", "age_max=80"]))
    assert isinstance(model, YearsModel)
    images = torch.randn(2, 3, 32, 32)
    assert model.train()(images).shape == (2, 6 * 81)
    with torch.no_grad():
        bands = model.eval()(images)
        again, ages = model.bands_and_age(images)
    assert bands.shape == (2, 18) and torch.allclose(bands.exp().sum(1), torch.ones(2), atol=1e-5)
    assert torch.allclose(bands, again) and ((0 <= ages) & (ages <= 80)).all()


def test_a_tiny_years_run_trains_predicts_three_bands_and_exports_consistently(tiny_data, tmp_path):
    run_dir = fit(load_config("age", [*TINY, f"data_dir={tiny_data}", f"project={tmp_path}", "age_target=years",
                                      "age_sigma=2"]))
    assert np.isfinite(pd.read_csv(run_dir / "results.csv")["val_loss"]).all()
    table, note = predict_runs([run_dir], "eval", tiny_data, tta=True)
    assert [c for c in table.columns if c.startswith("p")] == ["p0", "p1", "p2"]
    assert np.allclose(table[["p0", "p1", "p2"]].sum(axis=1), 1.0, atol=1e-5)
    assert table["age_years"].between(0, 100).all() and table["age_years"].nunique() > 1
    val, _ = predict_runs([run_dir, run_dir], "val", tiny_data)  # two runs voted: the age is averaged too
    assert "age_years" in val and val["target"].isin([0, 1, 2]).all()

    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from maskcls.export import OnnxRunner, export_run

    result = export_run(run_dir, check_folder=tiny_data / "eval" / "images")
    assert result.max_diff < 1e-4 and OnnxRunner(result.path).reports_age
    onnx_table, _ = predict_runs([run_dir], "eval", tiny_data, tta=True, runtime="onnx")
    assert np.abs(onnx_table[["p0", "p1", "p2"]].to_numpy() - table[["p0", "p1", "p2"]].to_numpy()).max() < 1e-4
    assert np.abs(onnx_table["age_years"] - table["age_years"]).max() < 1e-2


def test_evaluate_reports_the_age_mae_from_a_years_prediction(tmp_path):
    labels = pd.DataFrame({"ImageID": ["a.jpg", "b.jpg"], "ans": [0, 1], "age": [20, 40]})
    labels.to_csv(tmp_path / "labels.csv", index=False)
    labels[["ImageID", "ans"]].to_csv(tmp_path / "sub.csv", index=False)
    pd.DataFrame({"ImageID": ["b.jpg", "a.jpg"], "p0": [0.5, 0.5], "age_years": [43.0, 21.0]}).to_csv(
        tmp_path / "ages.csv", index=False)
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(tmp_path / "sub.csv"), str(tmp_path / "labels.csv"),
                                 "--ages", str(tmp_path / "ages.csv")])
    assert result.exit_code == 0, result.output
    assert "age MAE 2.00 years (2 images)" in result.output
    plain = runner.invoke(app, ["evaluate", str(tmp_path / "sub.csv"), str(tmp_path / "labels.csv")])
    assert plain.exit_code == 0 and "age MAE" not in plain.output  # no ages given, none reported
    bad = runner.invoke(app, ["evaluate", str(tmp_path / "sub.csv"), str(tmp_path / "labels.csv"),
                              "--ages", str(tmp_path / "sub.csv")])
    assert bad.exit_code == 1 and "age_years" in bad.output


def test_detect_reports_the_expected_age_of_a_years_run(tmp_path, monkeypatch):
    pytest.importorskip("skimage")
    from test_detect import make_run, portrait, run

    monkeypatch.setenv("MASKCLS_NO_PROGRESS", "1")
    project = tmp_path / "runs"
    for task in ("mask", "gender", "age"):
        make_run(project, task, "exp", 0, *(["age_target=years", "age_max=90"] if task == "age" else []))
    portrait().save(tmp_path / "portrait.jpg")
    result = run("detect", tmp_path / "portrait.jpg", "--project", project, "--out", tmp_path / "faces.csv",
                 "--min-face", 32)
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(tmp_path / "faces.csv")
    assert len(rows) == 1 and rows["status"].iloc[0] == "face"
    assert 0 <= rows["age_years"].iloc[0] <= 90 and rows["age"].iloc[0] in get_task("age").class_names
