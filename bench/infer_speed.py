"""Inference speed of the three specialists together: PyTorch eager vs onnxruntime, on this machine's CPU.

    python bench/infer_speed.py [--mask RUN --age RUN --gender RUN] [--set img_size=160 ...]
                                [--batches 1 32] [--threads 1 2] [--seconds 3]

Without runs, each specialist is built from its task config (untrained: weights do not change the speed),
with ``--set`` overrides. Each is exported to ONNX in a temporary folder exactly as ``maskcls export onnx``
does, then both engines classify the same random normalised batch, one specialist after the other:
images/s = batch size / the time all three take. Both engines get the same thread count (each of
``--threads`` in turn: on a shared machine one thread can beat two, see docs/benchmarks.md); PyTorch runs as
``maskcls predict`` does (eval, inference mode, the config's channels-last layout). Face detection and
image decoding are not included (see bench/detector_compare.py for the face detectors).
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from maskcls.config import Config, load_config
from maskcls.export import build_onnx_program
from maskcls.infer import OnnxRunner, load_run
from maskcls.models import build_model
from maskcls.tasks import SPECIALISTS


def specialists(args) -> list[tuple[str, torch.nn.Module, Config]]:
    """(task, model in eval mode, config) per specialist: the given runs, else built from the task configs."""
    found = []
    for task in SPECIALISTS:
        if getattr(args, task):
            run = load_run(getattr(args, task))
            found.append((task, run.model, run.config))
        else:
            config = load_config(task, ["pretrained=none", *args.set])
            found.append((task, build_model(config).eval(), config))
    return found


def images_per_second(pairs, batch_size: int, seconds: float) -> float:
    """``batch_size`` x repeats / seconds, each repeat every (model, images) pair in turn; one untimed warm-up,
    then at least three repeats and ``seconds``."""
    with torch.inference_mode():
        for model, images in pairs:
            model(images)
        repeats, start = 0, time.perf_counter()
        while repeats < 3 or time.perf_counter() - start < seconds:
            for model, images in pairs:
                model(images)
            repeats += 1
    return batch_size * repeats / (time.perf_counter() - start)


def print_table(models, runners, batches: list[int], seconds: float) -> None:
    """One line per batch size: both engines' images/s on the same random batch, and their largest
    probability difference on it."""
    print(f"{'batch':>5} {'torch img/s':>12} {'onnx img/s':>11} {'speed-up':>9} {'max |dp|':>9}")
    for batch_size in batches:
        batch = {size: torch.randn(batch_size, 3, size, size) for size in {c.img_size for *_, c in models}}
        eager = [(model, batch[config.img_size].contiguous(memory_format=_layout(config))) for _, model, config in models]
        onnx = [(runner, batch[config.img_size]) for runner, (*_, config) in zip(runners, models)]
        with torch.inference_mode():
            diff = max(float((m(x).softmax(1) - r(y).softmax(1)).abs().max()) for (m, x), (r, y) in zip(eager, onnx))
        torch_rate = images_per_second(eager, batch_size, seconds)
        onnx_rate = images_per_second(onnx, batch_size, seconds)
        print(f"{batch_size:>5} {torch_rate:>12.1f} {onnx_rate:>11.1f} {onnx_rate / torch_rate:>8.2f}x {diff:>9.1e}")


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.is_file() else []
    return names[0] if names else platform.processor() or platform.machine()


def _layout(config: Config) -> torch.memory_format:
    return torch.channels_last if config.channels_last else torch.contiguous_format


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for task in SPECIALISTS:
        parser.add_argument(f"--{task}", type=Path, help=f"{task} run folder (default: built from configs/{task}.yaml)")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides without runs, e.g. img_size=160")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per engine and batch size")
    args = parser.parse_args()

    models = specialists(args)
    with tempfile.TemporaryDirectory() as tmp:
        for task, model, config in models:
            start = time.perf_counter()
            build_onnx_program(model, config.img_size).save(Path(tmp) / f"{task}.onnx", external_data=False)
            print(f"exported {task} ({config.backbone}, {config.img_size} px) in {time.perf_counter() - start:.1f} s")
            model.to(memory_format=_layout(config))
        print(f"CPU: {cpu_name()}, {os.cpu_count()} logical cores; torch "
              f"{torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}")
        for threads in args.threads:
            torch.set_num_threads(threads)
            runners = [OnnxRunner(Path(tmp) / f"{task}.onnx", threads=threads) for task, *_ in models]
            print(f"\n{threads} thread(s) per engine; load average before: {os.getloadavg()[0]:.1f}")
            print_table(models, runners, args.batches, args.seconds)


if __name__ == "__main__":
    main()
