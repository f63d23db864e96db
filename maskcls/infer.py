"""Inference shared by every command that predicts (predict and submit, detect, export, a server): a trained run
loaded for inference, what runs it (PyTorch, or its exported ONNX file on onnxruntime), the test-time
augmentation views, the images to predict, and one :class:`Prediction` per set of images, in dataset order (the
dataset itself: ``data.dataset.build_dataset``).

Below the commands: nothing here imports submit, detect, export, combine, evaluate or the CLI
(docs/architecture.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .checkpoint import load_model
from .config import Config
from .data import DEFAULT_AGE_BOUNDS, load_train, read_eval_images, split_images
from .data.crop import file_hash
from .engine import Engine, predict_logits
from .errors import DataError, ExportError
from .tasks import get_task
from .transforms import tta_view_zoom
from .years import AGE_COLUMN, reports_age

SPLITS = ("eval", "val")
RUNTIMES = ("torch", "onnx")  # `--runtime`: PyTorch eager, or the run's exported ONNX file on onnxruntime


# --- a trained run ----------------------------------------------------------------------------------

@dataclass
class Run:
    """A trained run ready for inference: its folder, model (eval mode), config and normalisation."""

    run_dir: Path
    model: nn.Module
    config: Config
    mean: tuple[float, ...]
    std: tuple[float, ...]
    which: str = "best"  # the checkpoint it came from: <which>.pt (and <which>.onnx once exported)

    @property
    def task(self) -> str:
        return self.config.task


def load_run(run_dir: str | Path, which: str = "best") -> Run:
    if not Path(run_dir).exists():
        raise DataError(f"{run_dir}: run folder does not exist")
    model, config, state = load_model(Path(run_dir), which)
    return Run(Path(run_dir), model, config, tuple(state["mean"]), tuple(state["std"]), which)


def checkpoint_file(run_dir: str | Path, which: str = "best") -> Path:
    """``<run>/<which>.pt``, or the .pt file itself when given one."""
    path = Path(run_dir)
    return path / f"{which}.pt" if path.is_dir() else path


def onnx_path(run_dir: str | Path, which: str = "best") -> Path:
    """``<run>/<which>.onnx``: beside the checkpoint it was exported from (a bundled run's: in the bundle's cache)."""
    from .bundle import output_dir

    checkpoint = checkpoint_file(run_dir, which)
    return output_dir(checkpoint.parent) / f"{checkpoint.stem}.onnx"


# --- what predicts: PyTorch or onnxruntime ----------------------------------------------------------

def output_names(model: nn.Module) -> tuple[str, ...]:
    """The outputs of ``model`` as its ONNX export names them: ``logits``, and ``age_years`` for a model that
    reports the expected age (age_target=years)."""
    return ("logits", AGE_COLUMN) if reports_age(model) else ("logits",)


class OnnxRunner(nn.Module):
    """An ONNX file behind the PyTorch model's interface: an images tensor in, a logits tensor out (on the
    images' device). onnxruntime runs on the CPU whatever the device of the surrounding TTA."""

    def __init__(self, path: str | Path, threads: int | None = None):
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportError(f"{path}: running ONNX needs onnxruntime: pip install 'maskcls[onnx]'") from None
        options = ort.SessionOptions()
        # None: the thread count torch and the face detector use (onnxruntime's own default, every core, is slow
        # at batch 1 on a small machine); 0: onnxruntime's default
        options.intra_op_num_threads = torch.get_num_threads() if threads is None else threads
        options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise here
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for bad files
            raise ExportError(f"{path}: cannot be loaded by onnxruntime ({type(err).__name__}: {err})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        # an age_target=years export has a second output, the expected age (maskcls.years)
        self.reports_age = AGE_COLUMN in [output.name for output in self.session.get_outputs()]

    def _run(self, images: torch.Tensor) -> list:
        array = images.detach().float().cpu().contiguous().numpy()  # channels-last tensors become NCHW here
        return [torch.from_numpy(out).to(images.device) for out in self.session.run(None, {self.input_name: array})]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._run(images)[0]

    def bands_and_age(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, ages = self._run(images)
        return logits, ages


def load_onnx_model(run: Run) -> OnnxRunner:
    """The ``<which>.onnx`` of a loaded run, refused when missing or exported from another checkpoint."""
    path = onnx_path(run.run_dir, run.which)
    export_hint = f"run: maskcls export onnx --{run.task} {run.run_dir}"
    source = checkpoint_file(run.run_dir, run.which)
    if not path.is_file():
        raise ExportError(f"{path}: no ONNX export of {source.name}; {export_hint}")
    runner = OnnxRunner(path)
    if runner.metadata.get("checkpoint_sha1") != file_hash(source):
        raise ExportError(f"{path}: exported from another {source.name} (the checkpoint changed since); {export_hint}")
    return runner


def inference_model(run: Run, runtime: str = "torch") -> nn.Module:
    """What predicts for ``run``: its PyTorch model, or its ``<which>.onnx`` (``maskcls export onnx``) on
    onnxruntime behind the same interface (images in, logits out), so TTA and voting do not change."""
    if runtime == "torch":
        return run.model
    if runtime == "onnx":
        return load_onnx_model(run)
    raise ValueError(f"runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")


def inference_engine(config: Config, device: str = "auto", workers: int | None = None) -> Engine:
    """The Engine a run predicts on: ``device`` (not the one it trained on), the run's precision and layout."""
    return Engine.from_config(config, device=device, workers=workers)


# --- test-time augmentation -------------------------------------------------------------------------

def _flip(images: torch.Tensor) -> torch.Tensor:
    return torch.flip(images, dims=[3])


def _centre_zoom(fraction: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Centre crop of ``fraction`` of each side, resized back: a slightly zoomed-in view."""

    def view(images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        crop_h, crop_w = max(1, round(height * fraction)), max(1, round(width * fraction))
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        crop = images[..., top:top + crop_h, left:left + crop_w]
        # normalisation is per-channel affine, so resizing the normalised tensor equals resizing the image
        return nn.functional.interpolate(crop.float(), size=(height, width), mode="bilinear",
                                         align_corners=False, antialias=True).to(images.dtype)

    return view


def build_views(names: Sequence[str]) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """The original view, then each named one: ``flip`` (horizontal), ``scale<percent>`` (centre zoom)."""
    views = [("orig", lambda images: images)]
    for name in dict.fromkeys(names):  # in order, without repeats
        zoom = tta_view_zoom(name)  # refuses unknown names
        if name == "flip":
            views.append((name, _flip))
        elif zoom is not None:
            views.append((name, _centre_zoom(zoom)))
    return views


def tta_views(config: Config, tta: bool) -> tuple[str, ...]:
    """With ``tta``: the flip always, then the config's views; without: none (the original only)."""
    return ("flip", *config.tta) if tta else ()


class TTAModel(nn.Module):
    """Per image, the log of the class softmax averaged over views, so argmax and ``exp`` give the averaged
    prediction; for a model that reports the age (``age_target: years``), the expected age averaged over views
    as one extra last column (the mean of the views' year distributions has the mean of their expectations)."""

    def __init__(self, model: nn.Module, views: Sequence[tuple[str, Callable]]):
        super().__init__()
        self.model = model
        self.views = list(views)
        self.reports_age = reports_age(model)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        outputs = [self._scores_and_age(view(images)) for _, view in self.views]
        log_probs = torch.stack([scores.float().softmax(1) for scores, _ in outputs]).mean(0).clamp_min(1e-12).log()
        if not self.reports_age:
            return log_probs
        ages = torch.stack([age.float() for _, age in outputs]).mean(0)
        return torch.cat([log_probs, ages[:, None]], dim=1)

    def _scores_and_age(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.model.bands_and_age(images) if self.reports_age else (self.model(images), None)


# --- images and probabilities ---------------------------------------------------------------------

def image_table(config: Config, split: str, data_dir: str | Path) -> pd.DataFrame:
    """Rows to predict: key column, ``path`` to open, and for val ``target`` (the task's) and ``label`` (18-class)."""
    data_dir = Path(data_dir)
    if split == "eval":
        images = read_eval_images(data_dir)  # eval/info.csv and eval/images only
        return pd.DataFrame({"ImageID": images["ImageID"], "file": images["path"]})
    if split != "val":
        raise ValueError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    images = load_train(data_dir, DEFAULT_AGE_BOUNDS, config.label_fixes)
    _, val = split_images(images, config.folds, config.fold, config.seed)
    if val.empty:
        raise DataError(f"{data_dir}: fold {config.fold} of {config.folds} holds no validation images")
    return pd.DataFrame({"path": [Path(p).relative_to(data_dir).as_posix() for p in val["path"]],
                         "file": val["path"], "target": val[get_task(config.task).label_column],
                         "label": val["label"]})


@dataclass(frozen=True, eq=False)
class Prediction:
    """What the runs of one task say about a set of images, in their order: the class probabilities, and the
    expected age in years where the head has one (``age_target: years``, maskcls.years), else None. predict,
    submit, detect, export and serve all pass this record along."""

    probs: np.ndarray  # (images, classes)
    age_years: np.ndarray | None = None  # (images,)

    def __len__(self) -> int:
        return len(self.probs)

    def __getitem__(self, rows) -> Prediction:
        """The prediction of some images (a slice or index array)."""
        return Prediction(self.probs[rows], None if self.age_years is None else self.age_years[rows])

    @staticmethod
    def mean(predictions: Sequence[Prediction]) -> Prediction:
        """The soft vote of several runs over the same images; the age over the runs that report one."""
        ages = [p.age_years for p in predictions if p.age_years is not None]
        return Prediction(np.mean([p.probs for p in predictions], axis=0), np.mean(ages, axis=0) if ages else None)

    def columns(self) -> dict[str, np.ndarray]:
        """A prediction table's columns: ``p0..pK-1``, then ``age_years`` where there is an age."""
        columns = {f"p{k}": self.probs[:, k] for k in range(self.probs.shape[1])}
        return columns if self.age_years is None else {**columns, AGE_COLUMN: self.age_years}


def predict(model: nn.Module, dataset, engine: Engine, views=None, batch_size: int = 64,
            desc: str = "predict") -> Prediction:
    """Every image of ``dataset`` through ``model``, in order, averaged over ``views`` (default: the original
    only)."""
    tta = TTAModel(model, views or build_views(()))
    outputs, _ = predict_logits(engine.setup_model(tta), engine.loader(dataset, batch_size, train=False), engine,
                                desc=desc)
    if tta.reports_age:
        return Prediction(outputs[:, :-1].exp().numpy(), outputs[:, -1].numpy())
    return Prediction(outputs.exp().numpy())
