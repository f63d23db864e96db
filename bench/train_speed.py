"""Training throughput: the model alone (random tensors in memory) against the real input pipeline.

    python bench/train_speed.py [--backbone tf_efficientnet_lite0] [--img-size 128] [--batch 32] [--steps 30]

Prints images/s for each and their ratio; the target on a 2-core CPU is ratio >= 0.85 (the input
pipeline must not be the bottleneck). Skips cleanly when ../shared/data/faces is absent.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
from itertools import cycle, islice
from pathlib import Path

import torch

from maskcls.config import load_config
from maskcls.engine import Engine, build_datasets, build_optimizer, seed_everything
from maskcls.losses import build_loss
from maskcls.models import build_model, model_mean_std
from maskcls.tasks import get_task

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"


def timed_steps(model, batches, loss_fn, optimizer, engine: Engine, steps: int, warmup: int = 3) -> float:
    """Images/s over ``steps`` training steps after ``warmup`` untimed ones; batches is an iterator."""
    model.train()
    seen, start = 0, None
    for index, (images, targets) in enumerate(islice(batches, warmup + steps)):
        if index == warmup:
            start, seen = time.perf_counter(), 0
        images, targets = engine.to_device(images, targets)
        with engine.autocast():
            loss = loss_fn(model(images), targets)
        engine.step(loss, optimizer)
        seen += len(targets)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--task", default="age")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--crop", default="none")
    args = parser.parse_args()
    if not (args.data / "train").is_dir():
        print(f"skip: no dataset at {args.data}")
        return
    os.environ.setdefault("MASKCLS_NO_PROGRESS", "1")
    config = load_config(args.task, [f"data_dir={args.data}", f"backbone={args.backbone}", f"img_size={args.img_size}",
                                     f"batch_size={args.batch}", f"crop={args.crop}", "device=cpu",
                                     "pretrained=none"])  # speed does not depend on the weights
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"{args.backbone} at {args.img_size} px, batch {args.batch}, {args.steps} timed steps, task {args.task}")

    def fresh():
        seed_everything(0)
        model = build_model(config)
        engine = Engine.from_config(config)
        model = engine.setup_model(model)
        return model, engine, build_loss(config, get_task(config.task).num_classes), build_optimizer(config, model)

    model, engine, loss_fn, optimizer = fresh()
    num_classes = get_task(config.task).num_classes
    fake = (torch.randn(args.batch, 3, args.img_size, args.img_size), torch.randint(0, num_classes, (args.batch,)))
    model_only = timed_steps(model, cycle([fake]), loss_fn, optimizer, engine, args.steps)
    rows = [("model only (tensors in memory)", model_only, "")]

    mean, std = model_mean_std(model)
    for label, overrides in [("pipeline, preload=true workers=0", {"preload": True, "workers": 0}),
                             ("pipeline, preload=false workers=2", {"preload": False, "workers": 2})]:
        variant = dataclasses.replace(config, **overrides)
        start = time.perf_counter()
        data = build_datasets(variant, mean, std)
        setup_s = time.perf_counter() - start
        model, engine, loss_fn, optimizer = fresh()
        engine.workers = variant.workers
        loader = engine.loader(data.train, args.batch, train=True, seed=0)
        batches = (batch for _ in range(1000) for batch in loader)
        speed = timed_steps(model, batches, loss_fn, optimizer, engine, args.steps)
        rows.append((label, speed, f"set-up {setup_s:.1f} s for {len(data.train)} train images"))

    print("\n| input | images/s | ratio to model only | note |\n|---|---|---|---|")
    for label, speed, note in rows:
        print(f"| {label} | {speed:.1f} | {speed / model_only:.2f} | {note} |")


if __name__ == "__main__":
    main()
