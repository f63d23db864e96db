"""bench/: every script imports as ``bench.<name>`` and runs as ``python bench/<name>.py``; run names follow the
resolved config; the release check fills the crop caches, extra faces included, before it trains."""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
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


def test_the_fine_tune_split_holds_every_train_person_once_and_each_half_reads_as_a_dataset(sample_dataset, tmp_path):
    from maskcls.data.layout import scan_eval, scan_train

    finetune = importlib.import_module("bench.finetune")
    a, b = finetune.split_people(sample_dataset, held_out=0.25, seed=1)
    everyone = pd.read_csv(sample_dataset / "train" / "train.csv", dtype=str)
    assert sorted([*a["id"], *b["id"]]) == sorted(everyone["id"]) and not set(a["id"]) & set(b["id"])
    assert len(b) == round(0.25 * len(everyone))
    assert list(finetune.split_people(sample_dataset, 0.25, 1)[1]["id"]) == list(b["id"])  # the seed fixes the draw
    held_out = finetune.linked_dataset(sample_dataset, b, tmp_path / "b")
    train, problems = scan_train(held_out)
    assert problems == [] and set(train["person"]) == set(b["id"])
    assert len(scan_eval(held_out)[0]) == len(scan_eval(sample_dataset)[0])  # the whole eval split, linked
    finetune.linked_dataset(sample_dataset, b, tmp_path / "b")  # again: a stopped benchmark's folder is reused
    assert scan_train(held_out)[1] == []


def test_box_overlap_is_intersection_over_union():
    assert common.iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert common.iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert common.iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert common.iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_a_score_cell_is_the_macro_f1_over_present_classes_inside_its_interval():
    import numpy as np

    generalise = importlib.import_module("bench.generalise")
    truth = np.array([0, 1, 0, 1] * 10)  # class 2 never occurs: it must not pull the mean down
    wrong = truth.copy()
    wrong[:4] = 2  # four answers of an absent class: they count against 0 and 1
    people = np.arange(40) // 4
    cells = generalise.f1_cell(truth, {"right": truth, "wrong": wrong}, people)
    assert cells["right"][:3] == (1.0, 1.0, 1.0)
    point, low, high, draws = cells["wrong"]
    assert point == pytest.approx(2 * 18 / (2 * 18 + 2), abs=1e-9)
    assert low < point <= high <= 1.0  # some resamples leave out the one person answered wrong
    assert len(draws) == 1000


def test_the_bundle_check_reuses_a_submission_only_of_the_same_images_views_and_weights(monkeypatch, tmp_path):
    build_bundle = importlib.import_module("bench.build_bundle")
    calls = []

    def fake_maskcls(*args):
        calls.append(args)
        Path(args[args.index("--out") + 1]).write_text("ImageID,ans\n")
        return "", 0.0

    monkeypatch.setattr(build_bundle, "maskcls", fake_maskcls)
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"weights")
    out, data = tmp_path / "dev_ensemble.csv", tmp_path / "data"
    for _ in range(2):
        build_bundle.submission(out, data, {"mask": [run]}, tta=False)
    assert len(calls) == 1
    build_bundle.submission(out, data, {"mask": [run]}, tta=True)  # other views
    os.utime(run / "best.pt", ns=(1, 1))  # a retrained run
    build_bundle.submission(out, data, {"mask": [run]}, tta=True)
    assert len(calls) == 3
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text('{"files": {"mask/best.pt": "aa"}}')
    monkeypatch.setenv("MASKCLS_BUNDLE_DIR", str(bundle))
    build_bundle.submission(out, data, None, tta=True)
    build_bundle.submission(out, data, None, tta=True)
    (bundle / "manifest.json").write_text('{"files": {"mask/best.pt": "bb"}}')  # a rebuilt staging bundle
    build_bundle.submission(out, data, None, tta=True)
    assert len(calls) == 5 and "--bundled" in calls[-1]


def test_the_peer_table_gives_each_age_mae_on_the_photos_both_models_answered_with_a_paired_difference():
    import numpy as np

    peers = importlib.import_module("bench.peers")
    truth = pd.DataFrame({"age": [20, 30, 40, 50], "person": ["a", "a", "b", "c"]})
    answers = {"peer": pd.DataFrame({"years": [22, 30, 44, 50.0]}),
               "ours": pd.DataFrame({"years": [20, 31, np.nan, 55.0]})}  # no years for photo 2: left out of both
    lines = peers.mae_notes("dev all", truth, answers, draws=200)
    assert lines[0].startswith("  dev all, age MAE peer: 0.67 years")
    assert lines[1].startswith("  dev all, age MAE ours: 2.00 years")
    assert lines[2].startswith("  dev all, age MAE, ours minus peer: +1.33, interval")
    assert peers.mae_notes("dev", truth, {"peer": pd.DataFrame({"years": [np.nan] * 4})}, 10) == []


def test_every_fine_tune_start_is_one_member_per_task_and_only_the_bundle_starts_read_it(monkeypatch, tmp_path):
    from maskcls.bundle import BUNDLE_ENV
    from maskcls.tasks import SPECIALISTS

    finetune = importlib.import_module("bench.finetune")
    trained = []
    monkeypatch.setattr(finetune, "finished_run", lambda task, run, epochs, overrides: trained.append((run, overrides)))
    monkeypatch.setenv(BUNDLE_ENV, str(tmp_path / "elsewhere"))  # restored after the test; fine_tunes sets it
    starts = finetune.fine_tunes(tmp_path, tmp_path / "b", tmp_path / "crops", tmp_path / "bundle")
    assert os.environ[BUNDLE_ENV] == str(tmp_path / "bundle")
    assert set(starts) == {"imagenet-1", "imagenet-recipe", "bundle-1", "bundle-recipe"}
    for runs in starts.values():  # the shape submit's options are built from: task -> members
        assert set(runs) == set(SPECIALISTS) and all(len(members) == 1 for members in runs.values())
    for run, overrides in trained:
        assert ("pretrained=maskcls" in overrides) == run.name.startswith("bundle")
        assert ("epochs=1" in overrides) == run.name.endswith("-1") or load_config(run.parent.name).epochs == 1


def test_the_rebuild_trains_each_task_on_every_extra_source_whose_labels_carry_its_column(tmp_path):
    build_bundle = importlib.import_module("bench.build_bundle")

    def source(name: str, header: str, images: bool = True) -> Path:
        folder = tmp_path / name
        (folder / "images" if images else folder).mkdir(parents=True)
        (folder / "labels.csv").write_text(header + "\n")
        return folder

    faces = source("extra_faces", "file,age,gender,race,source")
    masks = source("masked", "file,mask")
    source("photos", "photo,x1,y1,x2,y2,mask", images=False)  # labelled boxes to score detect on, not to train
    source("boxes", "photo,mask")  # no file column: not the extra layout
    (tmp_path / "ood_ffhq" / "eval").mkdir(parents=True)  # eval only
    assert build_bundle.labelled_sources("age", tmp_path) == [faces]
    assert build_bundle.labelled_sources("gender", tmp_path) == [faces]
    assert build_bundle.labelled_sources("mask", tmp_path) == [masks]
    assert build_bundle.labelled_sources("age", tmp_path / "absent") == []


def test_one_extra_source_given_as_a_list_resolves_to_the_run_name_it_had_as_a_path():
    from bench.generalise import recipe_name

    folder = "../shared/data/extra_faces"
    assert recipe_name("age", [f"extra_data={folder}"]) == recipe_name("age", [f"extra_data=[{folder}]"])
