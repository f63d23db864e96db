"""Distributed training and prediction: two CPU processes (gloo) launched by torchrun on this machine.

Run as a script under torchrun, this file is also the worker for the prediction and failure tests.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from maskcls.checkpoint import load_model
from maskcls.data.sample import make_sample_dataset
from maskcls.data.samplers import DistributedWeightedSampler, ShardedSampler
from maskcls.engine import Engine, build_datasets, predict_logits, validate_one_epoch
from maskcls.losses import build_loss
from maskcls.predictions import predict_runs, write_predictions
from maskcls.tasks import get_task

TINY = ["backbone=test_efficientnet", "pretrained=none", "crop=none", "img_size=32", "batch_size=16", "workers=0",
        "folds=3", "epochs=1", "ensemble=1"]  # one run: what DDP splits
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASKCLS_NO_PROGRESS": "1"}
    return subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_sample_dataset(tmp_path_factory.mktemp("faces"), people=15, eval_people=2, size=(48, 64))


@pytest.fixture(scope="module")
def two_process_run(tiny_data, tmp_path_factory):
    """``torchrun --nproc_per_node=2 -m maskcls train age`` for one epoch, weighted sampling."""
    project = tmp_path_factory.mktemp("runs")
    done = torchrun("-m", "maskcls", "train", "age", *TINY, "sampler=weighted", f"data_dir={tiny_data}",
                    f"project={project}")
    assert done.returncode == 0, done.stderr[-3000:]
    return project, done


def val_loader(run_dir: Path, engine: Engine, odd: bool = True):
    """(model, config, data, loader): the run's last weights and its validation images, 8 a batch; with
    ``odd``, an odd number of them, so that the two ranks' shares differ in size."""
    model, config, state = load_model(run_dir, "last")
    data = build_datasets(config, state["mean"], state["std"])
    val = data.val
    if odd and len(val) % 2 == 0:
        val = torch.utils.data.Subset(val, range(len(val) - 1))
    return model, config, data, engine.loader(val, 8, train=False)


def test_two_processes_train_into_one_run_folder(two_process_run):
    project, done = two_process_run
    assert [p.name for p in (project / "age").iterdir()] == ["exp"]
    run_dir = project / "age" / "exp"
    for name in ("config.yaml", "results.csv", "best.pt", "last.pt", "curves.png", "confusion.png"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.glob(".*.tmp*"))
    assert list(pd.read_csv(run_dir / "results.csv")["epoch"]) == [0]
    assert done.stdout.count("age epoch 1/1:") == done.stdout.count("run folder:") == 1  # rank 0 reports


def test_gathered_val_metrics_equal_one_process_on_the_same_checkpoint(two_process_run):
    project, _ = two_process_run
    run_dir = project / "age" / "exp"
    logged = pd.read_csv(run_dir / "results.csv").iloc[0]
    engine = Engine("cpu")
    model, config, data, loader = val_loader(run_dir, engine, odd=False)
    assert len(loader.dataset) % 2 == 1  # 35 images: shares of 18 and 17, padding would repeat one
    num_classes = get_task("age").num_classes
    loss_fn = build_loss(config, num_classes, data.class_counts)
    val = validate_one_epoch(engine.setup_model(model), loader, loss_fn, engine, num_classes)
    assert val["val_f1"] == pytest.approx(logged["val_f1"], abs=1e-12)
    assert val["val_loss"] == pytest.approx(logged["val_loss"], rel=1e-5)  # every image once, same BN statistics
    assert val["val_acc"] == pytest.approx(logged["val_acc"], abs=1e-12)


@pytest.fixture(scope="module")
def two_process_predictions(two_process_run, tiny_data, tmp_path_factory):
    """The worker below under torchrun: val probabilities by predict_logits, eval predictions by submit."""
    out = tmp_path_factory.mktemp("predictions")
    done = torchrun(__file__, "predict", str(two_process_run[0] / "age" / "exp"), str(tiny_data), str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["eval.csv", "eval.json", "val.npz"]  # rank 1 wrote nothing
    return out


def test_two_process_predict_gives_the_one_process_probabilities(two_process_run, two_process_predictions):
    run_dir = two_process_run[0] / "age" / "exp"
    gathered = np.load(two_process_predictions / "val.npz")
    engine = Engine("cpu")
    model, _, _, loader = val_loader(run_dir, engine)
    logits, targets = predict_logits(model, loader, engine)
    assert len(loader.dataset) % 2 == 1
    np.testing.assert_array_equal(gathered["targets"], targets.numpy())
    np.testing.assert_allclose(gathered["probs"], logits.softmax(1).numpy(), atol=1e-6)


def test_two_process_submit_predicts_what_one_process_does(two_process_run, tiny_data, two_process_predictions,
                                                            tmp_path):
    table, note = predict_runs([two_process_run[0] / "age" / "exp"], "eval", tiny_data, tta=True, device="cpu")
    one = pd.read_csv(write_predictions(table, tmp_path / "eval.csv", note))
    two = pd.read_csv(two_process_predictions / "eval.csv")
    pd.testing.assert_frame_equal(two, one, check_exact=False, atol=1e-6)


def test_a_failing_rank_fails_the_job_with_its_error():
    done = torchrun(__file__, "fail")
    assert done.returncode != 0
    assert "rank 1 cannot read its images" in done.stderr
    assert re.search(r"Root Cause.*?rank\s*:\s*1 ", done.stderr, re.DOTALL)  # torchrun's summary names it


def test_samplers_split_one_draw_or_one_pass_across_ranks():
    shares = [list(ShardedSampler(7, rank, 3)) for rank in range(3)]
    assert [len(s) for s in shares] == [3, 2, 2] and sorted(sum(shares, [])) == list(range(7))
    weights = [1.0, 0.0, 3.0, 1.0, 1.0]
    draws = [list(DistributedWeightedSampler(weights, rank, 2, seed=5)) for rank in range(2)]
    assert [len(d) for d in draws] == [3, 3]  # ceil(5 / 2): equal, so DDP's steps line up
    assert 1 not in sum(draws, [])
    assert draws == [list(DistributedWeightedSampler(weights, rank, 2, seed=5)) for rank in range(2)]
    assert draws != [list(DistributedWeightedSampler(weights, rank, 2, seed=6)) for rank in range(2)]
    with pytest.raises(ValueError, match="rank 2"):
        ShardedSampler(7, 2, 2)


def _worker(mode: str, *args: str) -> None:
    engine = Engine("cpu")
    if mode == "fail":
        if engine.rank == 1:
            raise RuntimeError("rank 1 cannot read its images")
        engine.all_sum(1.0)  # rank 0 waits here until torchrun stops it
    elif mode == "predict":
        run_dir, data_dir, out = args
        model, _, _, loader = val_loader(Path(run_dir), engine)
        logits, targets = predict_logits(model, loader, engine)
        table, note = predict_runs([run_dir], "eval", data_dir, tta=True, device="cpu")
        if engine.is_main:
            np.savez(Path(out) / "val.npz", probs=logits.softmax(1).numpy(), targets=targets.numpy())
            write_predictions(table, Path(out) / "eval.csv", note)
    engine.close()


if __name__ == "__main__":
    _worker(*sys.argv[1:])
