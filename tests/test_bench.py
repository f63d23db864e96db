"""bench/: every script imports as ``bench.<name>`` and runs as ``python bench/<name>.py``; run names follow the
resolved config; the release check fills the crop caches, extra faces included, before it trains."""
from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from maskcls.config import CONFIG_DIR, load_config  # noqa: E402

SCRIPTS = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem not in ("__init__", "common"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_bench_script_imports_as_a_module_with_a_main(name):
    module = importlib.import_module(f"bench.{name}")
    assert callable(module.main)


def test_a_bench_script_runs_as_a_file_outside_the_package():
    # `python -m bench.generalise` is the import above; as a file, bench/ alone is on the path
    done = subprocess.run([sys.executable, "bench/generalise.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--joint" in done.stdout and "release check" in done.stdout


def test_config_hash_follows_the_values_not_the_yaml_text(tmp_path):
    for name in ("mask.yaml", "base.yaml"):
        text = (CONFIG_DIR / name).read_text()
        (tmp_path / name).write_text("# a comment a reader added\n" + text.replace("  # ", "  # reworded: "))
    assert common.config_hash("mask", config_file=tmp_path / "mask.yaml") == common.config_hash("mask")
    assert common.config_hash("mask", ["project=elsewhere", "name=other"]) == common.config_hash("mask")
    assert common.config_hash("mask", ["lr=1e-3"]) != common.config_hash("mask")
    base = tmp_path / "base.yaml"
    base.write_text(base.read_text().replace("batch_size: 32", "batch_size: 16"))
    assert common.config_hash("mask", config_file=tmp_path / "mask.yaml") != common.config_hash("mask")


def test_crop_all_crops_with_every_detector_the_configs_name_and_their_extra_faces(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(common, "maskcls", lambda *args: calls.append(args) or ("", 1.0))
    configs = [load_config("mask"), load_config("gender", ["extra_data=extra_faces", "crop_detector=mtcnn"]),
               load_config("age", ["crop=none", "crop_detector=mtcnn"])]
    assert common.crop_all(tmp_path, *common.extra_options(configs), configs=configs) == 2.0
    assert calls == [("crop", str(tmp_path), "--detector", "retinaface", "--extra", "extra_faces"),
                     ("crop", str(tmp_path), "--detector", "mtcnn", "--extra", "extra_faces")]


def test_the_release_check_crops_both_sets_and_the_extra_faces_before_it_trains(monkeypatch, tmp_path):
    generalise = importlib.import_module("bench.generalise")
    sets = {}
    for name in ("dev", "ood"):
        (tmp_path / name / "eval").mkdir(parents=True)
        (tmp_path / name / "eval" / "labels.csv").write_text("ImageID\n")
        sets[name] = tmp_path / name
    (tmp_path / "dev" / "train").mkdir()
    monkeypatch.setattr(generalise, "SETS", sets)
    events = []

    def crop_all(data, *options, configs=None):
        events.append(("crop", Path(data).name, *options))
        return 0.0

    def finished_run(task, run, epochs, train_args):
        events.append(("train", task))
        raise KeyboardInterrupt  # enough: the order is known

    monkeypatch.setattr(generalise, "crop_all", crop_all)
    monkeypatch.setattr(generalise, "finished_run", finished_run)
    monkeypatch.setattr(sys, "argv", ["generalise.py", "--project", str(tmp_path / "runs"),
                                      "--recipe", "extra", "gender.extra_data=extra_faces"])
    with pytest.raises(KeyboardInterrupt):
        generalise.main()
    assert events == [("crop", "dev", "--extra", "extra_faces"), ("crop", "ood"), ("train", "mask")]
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)
