"""ONNX export: one file per run, checked against PyTorch with onnxruntime (``infer.OnnxRunner`` runs it behind
``--runtime onnx``).

Each run's ``<which>.pt`` becomes ``<which>.onnx`` beside it: input ``images`` (batch, 3, img_size,
img_size), normalised as the run's eval transforms leave them, with a dynamic batch axis; output ``logits``
(batch, classes). Softmax stays outside the graph, so the file and the PyTorch model answer the same way:
TTA averages the softmax of each view's logits in ``infer.TTAModel`` for both runtimes. A deployer takes
``softmax(logits)``; the metadata holds the class names, mean, std and image size to prepare the input.

The export goes through torch's default exporter (``torch.onnx.export(dynamo=True)``, needs ``onnxscript``),
which works offline. A file is written only once onnxruntime agrees with PyTorch on real images: the largest
difference of any class probability must stay below ``PARITY_ATOL``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .data.crop import file_hash
from .data.dataset import build_dataset
from .data.images import PHOTO_SUFFIXES
from .errors import DataError, ExportError
from .infer import OnnxRunner, checkpoint_file, load_run, onnx_path, output_names
from .io import atomic_path
from .tasks import get_task

PARITY_ATOL = 1e-4  # max |p_onnx - p_torch| over every class probability of every check image
CHECK_IMAGES = 8  # real images per parity check: the first in sorted order of the check folder
_OPSET = 18


@dataclass
class ExportResult:
    path: Path
    max_diff: float  # largest |p_onnx - p_torch| over the check images
    images: int  # check images compared

    def format(self) -> str:
        return f"wrote {self.path}: max |p_onnx - p_torch| {self.max_diff:.1e} on {self.images} real images"


def check_images_of(config, folder: str | Path | None = None, limit: int = CHECK_IMAGES) -> list[Path]:
    """The first ``limit`` image files of ``folder`` (default: the run's ``<data_dir>/eval/images``)."""
    folder = Path(folder) if folder else Path(config.data_dir) / "eval" / "images"
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES) \
        if folder.is_dir() else []
    if not files:
        raise ExportError(f"{folder}: no images to check the export against; pass --check-images FOLDER")
    return files[:limit]


def check_batch(run, files) -> torch.Tensor:
    """``files`` as the run's eval pipeline feeds them to the model: its face crops, resize, normalisation."""
    dataset = build_dataset(run.config, [str(f) for f in files], run.mean, run.std)
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def max_prob_diff(model: nn.Module, runner: OnnxRunner, images: torch.Tensor) -> float:
    """Largest probability difference between PyTorch and onnxruntime, on the whole batch and on the first
    image alone (so both a batch of one and a larger one cross the dynamic axis)."""
    diff = 0.0
    with torch.inference_mode():
        for batch in (images, images[:1]):
            expected = model(batch).float().softmax(1)
            got = runner(batch).float().softmax(1)
            diff = max(diff, float((expected - got).abs().max()))
    return diff


def build_onnx_program(model: nn.Module, img_size: int):
    """torch's ONNXProgram of ``model``: ``images`` (batch, 3, img_size, img_size) -> ``logits``, batch dynamic."""
    example = torch.zeros(2, 3, img_size, img_size)  # batch 2: a batch of one would invite the exporter to fix it
    outputs = list(output_names(model))
    model = _BandsAndAge(model) if len(outputs) > 1 else model  # the expected age: a second output
    return torch.onnx.export(model.eval(), (example,), input_names=["images"], output_names=outputs, dynamo=True,
                             opset_version=_OPSET, verbose=False, dynamic_shapes=({0: torch.export.Dim("batch")},))


class _BandsAndAge(nn.Module):
    """An age_target=years model with both outputs: band log-probabilities (``logits``) and ``age_years``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        return self.model.bands_and_age(images)


def export_run(run_dir: str | Path, which: str = "best", check_folder: str | Path | None = None) -> ExportResult:
    """Export one run to ``<which>.onnx`` and check it; the file appears only when the check passes."""
    run = load_run(run_dir, which)
    files = check_images_of(run.config, check_folder)
    images = check_batch(run, files)
    path = onnx_path(run_dir, which)
    try:
        import onnxscript  # noqa: F401  torch's exporter needs it; fail with the fix rather than its traceback
    except ImportError:
        raise ExportError(f"{path}: exporting needs onnx, onnxscript and onnxruntime: pip install 'maskcls[onnx]'") \
            from None
    size = run.config.img_size
    try:
        program = build_onnx_program(run.model, size)
    except Exception as err:  # the exporter raises many types; the run and its backbone say what failed
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ExportError(f"{path}: torch.onnx.export failed for backbone {run.config.backbone} "
                          f"({type(err).__name__}: {message})") from None
    program.model.metadata_props.update({
        "task": run.task, "class_names": json.dumps(list(get_task(run.task).class_names)), "img_size": str(size),
        "mean": json.dumps(list(run.mean)), "std": json.dumps(list(run.std)),
        "output": "logits (softmax not applied)", "checkpoint": str(checkpoint_file(run_dir, which).resolve()),
        "checkpoint_sha1": file_hash(checkpoint_file(run_dir, which))})
    with atomic_path(path) as tmp:
        program.save(tmp, external_data=False)
        diff = max_prob_diff(run.model, OnnxRunner(tmp), images)
        if not diff < PARITY_ATOL:  # NaN fails too
            raise ExportError(f"{path}: onnxruntime's probabilities differ from PyTorch's by {diff:.2g} "
                              f"(limit {PARITY_ATOL:g}) on {len(files)} images of {files[0].parent}; not written")
    return ExportResult(path, diff, len(files))


def export_runs(run_dirs, which: str = "best", check_folder: str | Path | None = None) -> list[ExportResult]:
    """Export each run in turn; stops at the first failure (files already written stay valid)."""
    if not run_dirs:
        raise DataError("no run given")
    return [export_run(run_dir, which, check_folder) for run_dir in run_dirs]
