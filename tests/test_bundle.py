"""The bundled specialists: write_bundle's files (float16, sha256 manifest), a damaged file refused in one line,
which runs answer (named > newest in runs/ > the bundle; --bundled; mixing), commands on the bundle writing only
outside it, and ``pretrained: maskcls``.

The test bundle holds untrained tiny runs (as test_detect's): the answers are arbitrary, the paths real.
``MASKCLS_BUNDLE_DIR`` points the code at it, ``XDG_CACHE_HOME`` the bundle's user cache at a test folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import untrained_run
from test_detect import TINY, one_thread, portrait, quiet, run  # noqa: F401 (autouse fixtures)

from maskcls.bundle import (BUNDLE_ENV, NoBundle, bundle_version, is_bundled, load_bundle, output_dir,
                            resolve_runs, write_bundle)
from maskcls.config import load_config
from maskcls.errors import ConfigError, WeightsError
from maskcls.infer import load_run, onnx_path
from maskcls.models import build_model
from maskcls.tasks import SPECIALISTS

VERSION = "2026.01.31"


def make_bundle(root: Path, source: Path, version: str = VERSION, card: str | None = "# test card\n") -> Path:
    """Untrained tiny runs of the three tasks under ``source`` (seed 7: other weights than the runs tests make),
    written as a bundle into ``root``."""
    runs = {task: untrained_run(source, task, [*TINY, f"data_dir={source / 'faces'}"], "exp", seed=7)
            for task in SPECIALISTS}
    write_bundle(runs, root, version, card)
    return root


@pytest.fixture(scope="module")
def bundle_env(tmp_path_factory):
    """A test bundle installed (MASKCLS_BUNDLE_DIR), a user cache of its own, and a working folder without runs/."""
    base = tmp_path_factory.mktemp("bundle")
    root = make_bundle(base / "weights", base / "source")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(BUNDLE_ENV, str(root))
        patch.setenv("XDG_CACHE_HOME", str(base / "cache"))
        (base / "work").mkdir()
        patch.chdir(base / "work")
        yield root


@pytest.fixture
def bundle(bundle_env):
    return load_bundle()


def test_write_bundle_keeps_what_inference_needs_in_float16_with_sha256_in_the_manifest(bundle, bundle_env):
    manifest = json.loads((bundle_env / "manifest.json").read_text())
    assert manifest["version"] == VERSION and manifest["tasks"] == list(SPECIALISTS)
    assert set(manifest["files"]) == {f"{t}/{f}" for t in SPECIALISTS for f in ("best.pt", "config.yaml")} | {
        "MODEL_CARD.md"}
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((bundle_env / name).read_bytes()).hexdigest() == digest
    state = torch.load(bundle_env / "age" / "best.pt", weights_only=True)
    assert set(state) == {"config", "class_names", "mean", "std", "best_f1", "model"}  # no optimizer, no epoch
    floats = [t for t in state["model"].values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float16 for t in floats)


def test_writing_the_same_runs_again_gives_the_same_bytes(bundle, tmp_path):
    runs = {task: bundle.root.parent / "source" / task / "exp" for task in SPECIALISTS}
    again = write_bundle(runs, tmp_path / "again", VERSION, "# test card\n")
    first = json.loads((bundle.root / "manifest.json").read_text())["files"]
    assert json.loads((again.root / "manifest.json").read_text())["files"] == first  # every sha256 the same


@pytest.mark.parametrize("task", SPECIALISTS)
def test_a_bundled_run_loads_in_float32_and_predicts_as_its_run_within_float16(bundle, task):
    source = bundle.root.parent / "source" / task / "exp"
    bundled, original = load_run(bundle.run_dir(task)), load_run(source)
    assert all(p.dtype == torch.float32 for p in bundled.model.parameters())
    assert bundled.config == original.config and bundled.mean == original.mean
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():  # the years head (age) answers log-probabilities, a band head logits
        expected, got = (run.model(images).float().log_softmax(1).exp() for run in (original, bundled))
    assert (expected - got).abs().max() < 2e-3
    assert not torch.equal(expected, got)  # float16 on disk: close, not the same


def test_a_damaged_file_is_refused_in_one_line(bundle, tmp_path, monkeypatch):
    damaged = Path(shutil.copytree(bundle.root, tmp_path / "weights"))
    data = bytearray((damaged / "gender" / "best.pt").read_bytes())
    data[-100] ^= 0xFF
    (damaged / "gender" / "best.pt").write_bytes(bytes(data))
    monkeypatch.setenv(BUNDLE_ENV, str(damaged))
    message = f"maskcls bundle file {damaged / 'gender' / 'best.pt'} is damaged (sha256 mismatch); reinstall maskcls"
    with pytest.raises(WeightsError) as err:
        resolve_runs({}, bundled=True)
    assert str(err.value) == message
    result = run("detect", portrait_file(tmp_path), "--bundled", "--out", tmp_path / "d.csv")
    assert result.exit_code == 1 and result.stderr == f"error: {message}\n"
    shutil.copyfile(bundle.root / "gender" / "best.pt", damaged / "gender" / "best.pt")
    (damaged / "MODEL_CARD.md").unlink()
    with pytest.raises(WeightsError, match=r"MODEL_CARD.md is missing; reinstall maskcls"):
        load_bundle()


def test_no_bundle_installed_says_so_in_one_line_where_a_run_is_needed(bundle_env, tmp_path, monkeypatch):
    monkeypatch.setenv(BUNDLE_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(NoBundle, match=r"^runs/mask: no run with a best.pt and no maskcls bundle installed "
                                       r"\(.*nowhere/manifest.json not found\); train one \(maskcls train mask\) "
                                       r"or pass --mask RUN$"):
        resolve_runs({})
    result = run("detect", portrait_file(tmp_path), "--bundled")
    assert result.exit_code == 1
    assert result.stderr == f"error: no maskcls bundle installed ({tmp_path / 'nowhere' / 'manifest.json'} not found)\n"


def portrait_file(folder: Path) -> Path:
    path = folder / "portrait.png"
    portrait().save(path)
    return path


@pytest.fixture
def own_runs(bundle_env):
    """runs/<task>/exp in the working folder for mask and age (not gender), an older and a newer mask run."""
    project = Path("runs").resolve()
    made = {task: untrained_run(project, task, [*TINY], "exp") for task in ("mask", "age")}
    newer = untrained_run(project, "mask", [*TINY], "newer")
    os.utime(newer / "best.pt", (made["mask"].stat().st_mtime + 10,) * 2)
    yield {**made, "newer": newer}
    shutil.rmtree(project)


def test_named_runs_win_then_the_newest_in_runs_then_the_bundle(bundle, own_runs):
    runs = resolve_runs({})
    assert runs == {"mask": [Path("runs/mask/newer")], "age": [Path("runs/age/exp")],
                    "gender": [bundle.run_dir("gender")]}
    named = resolve_runs({"mask": [own_runs["mask"]]})
    assert named["mask"] == [own_runs["mask"]] and named["gender"] == [bundle.run_dir("gender")]


def test_bundled_takes_the_bundle_for_every_task_not_named_and_mixes_with_named_runs(bundle, own_runs):
    assert resolve_runs({}, bundled=True) == {task: [bundle.run_dir(task)] for task in SPECIALISTS}
    mixed = resolve_runs({"mask": [own_runs["newer"]]}, bundled=True)
    assert mixed == {"mask": [own_runs["newer"]], "age": [bundle.run_dir("age")],
                     "gender": [bundle.run_dir("gender")]}
    assert bundle_version(mixed["mask"]) is None and bundle_version(mixed["age"]) == VERSION


def test_a_project_named_never_falls_back_to_the_bundle(bundle, own_runs):
    with pytest.raises(Exception, match=r"runs/gender: no run with a best.pt"):
        resolve_runs({}, project="runs")
    result = run("detect", "x.png", "--bundled", "--project", "runs")
    assert result.exit_code == 1 and "--bundled and --project: pass one" in result.stderr


def test_the_word_bundled_names_the_bundle_and_the_bundle_has_best_only(bundle):
    assert resolve_runs({"mask": ["bundled"]}, tasks=["mask"]) == {"mask": [bundle.run_dir("mask")]}
    with pytest.raises(WeightsError, match=r"holds best.pt only, not last.pt"):
        resolve_runs({}, which="last", bundled=True)


def test_detect_names_the_bundle_version_and_writes_nothing_into_the_bundle(bundle, own_runs, tmp_path):
    before = sorted(p.name for p in bundle.root.rglob("*"))
    result = run("detect", portrait_file(tmp_path), "--out", tmp_path / "d.json")
    assert result.exit_code == 0, result.output
    assert f"(maskcls bundle {VERSION})" in result.stdout
    note = json.loads((tmp_path / "d.json").read_text())
    assert note["bundle"] == VERSION and note["runs"]["gender"] == [str(bundle.run_dir("gender").resolve())]
    assert note["runs"]["mask"] == [str(own_runs["newer"].resolve())]
    assert sorted(p.name for p in bundle.root.rglob("*")) == before


def test_submit_and_predict_with_the_bundle_write_into_the_user_cache(bundle, sample_dataset, tmp_path):
    result = run("submit", "--bundled", "--out", tmp_path / "sub.csv")
    assert result.exit_code == 1 and "a bundled run was not trained on a data folder of yours; pass --data-dir" \
        in result.stderr
    result = run("submit", "--bundled", "--data-dir", sample_dataset, "--out", tmp_path / "sub.csv")
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(tmp_path / "sub.csv")) == len(pd.read_csv(sample_dataset / "eval" / "info.csv"))
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "maskcls" / f"bundle-{VERSION}"
    assert {p.parent.name for p in cache.glob("*/pred_eval.csv")} == set(SPECIALISTS)
    result = run("predict", "mask", "bundled", sample_dataset)
    assert result.exit_code == 0, result.output
    assert f"-> {cache / 'mask' / 'pred_eval.csv'}" in result.stdout
    assert not list(bundle.root.rglob("pred_*"))


def test_onnx_files_of_the_bundle_live_in_the_user_cache(bundle):
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "maskcls" / f"bundle-{VERSION}"
    assert is_bundled(bundle.run_dir("age")) and is_bundled(bundle.run_dir("age") / "best.pt")
    assert onnx_path(bundle.run_dir("age")) == cache / "age" / "best.onnx"
    assert output_dir(bundle.root.parent / "source" / "age" / "exp") == bundle.root.parent / "source" / "age" / "exp"


# --- fine-tuning from the bundle --------------------------------------------------------------------

def test_pretrained_maskcls_starts_from_the_bundled_specialist_year_head_included(bundle):
    model = build_model(load_config("age", [*TINY, "pretrained=maskcls"]))
    bundled = torch.load(bundle.run_dir("age") / "best.pt", weights_only=True)["model"]
    assert any("classifier" in key for key in bundled)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, bundled[key].to(tensor.dtype)), key


@pytest.mark.parametrize("override, message", [
    ("img_size=64", "pretrained=maskcls: img_size=64, but the bundled gender specialist has img_size=32; "
                    "set img_size=32"),
    ("backbone=resnet18", "pretrained=maskcls: backbone=resnet18, but the bundled gender specialist has "
                          "backbone=test_efficientnet"),
])
def test_pretrained_maskcls_refuses_another_shape_in_one_line(bundle, override, message):
    with pytest.raises(ConfigError) as err:
        build_model(load_config("gender", [*TINY, override, "pretrained=maskcls"]))
    assert str(err.value).startswith(message)


def test_pretrained_maskcls_needs_a_specialist_task():
    with pytest.raises(ConfigError, match=r"pretrained=maskcls: the bundle holds the specialists mask, gender, "
                                          r"age, no joint model"):
        load_config("joint", ["pretrained=maskcls"])


def test_write_bundle_refuses_a_bad_version_a_wrong_task_and_an_unfinished_run(bundle, tmp_path):
    source = bundle.root.parent / "source"
    with pytest.raises(WeightsError, match=r"bundle version '2026-01-31': expected YYYY.MM.DD"):
        write_bundle({"mask": source / "mask" / "exp"}, tmp_path / "b", "2026-01-31")
    with pytest.raises(Exception, match=r"is a age run, not mask"):
        write_bundle({"mask": source / "age" / "exp"}, tmp_path / "b", VERSION)
    with pytest.raises(Exception, match=r"not a finished run \(needs best.pt and config.yaml\)"):
        write_bundle({"mask": tmp_path}, tmp_path / "b", VERSION)
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_export_onnx_of_the_bundle_goes_to_the_user_cache_and_engine_onnx_finds_it(bundle, tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    photo = portrait_file(tmp_path)
    result = run("detect", photo, "--bundled", "--runtime", "onnx", "--out", tmp_path / "d.csv")
    assert result.exit_code == 1 and f"{onnx_path(bundle.run_dir('mask'))}: no ONNX export" in result.stderr
    result = run("export", "onnx", "--bundled", "--check-images", tmp_path)
    assert result.exit_code == 0, result.output
    assert all(f"wrote {onnx_path(bundle.run_dir(task))}" in result.stdout for task in SPECIALISTS)
    assert not list(bundle.root.rglob("*.onnx"))
    onnx_rows = run("detect", photo, "--bundled", "--runtime", "onnx", "--out", tmp_path / "onnx.csv")
    torch_rows = run("detect", photo, "--bundled", "--out", tmp_path / "torch.csv")
    assert onnx_rows.exit_code == torch_rows.exit_code == 0, onnx_rows.output
    onnx_table, torch_table = pd.read_csv(tmp_path / "onnx.csv"), pd.read_csv(tmp_path / "torch.csv")
    assert len(onnx_table) == 1 and onnx_table[["mask", "gender", "age"]].equals(torch_table[["mask", "gender", "age"]])


def test_an_ensemble_packed_as_int8_is_bundled_as_members_that_vote(tmp_path, monkeypatch):
    source = tmp_path / "source"
    members = [untrained_run(source, "gender", [*TINY, f"data_dir={source / 'faces'}"], f"m{k}", seed=11 + k)
               for k in range(2)]
    single = untrained_run(source, "mask", [*TINY, f"data_dir={source / 'faces'}"], "exp", seed=7)
    root = tmp_path / "weights"
    write_bundle({"mask": single, "gender": members}, root, VERSION, storage="int8")
    files = json.loads((root / "manifest.json").read_text())["files"]
    assert {"gender/member0/best.pt", "gender/member1/best.pt", "mask/best.pt"} <= set(files)
    packed = torch.load(root / "gender" / "member1" / "best.pt", weights_only=True)["model"]
    assert any(isinstance(v, dict) and v["int8"].dtype == torch.int8 for v in packed.values())
    monkeypatch.setenv(BUNDLE_ENV, str(root))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    runs = resolve_runs({"mask": ["bundled"], "gender": ["bundled"]}, tasks=("mask", "gender"))
    assert [r.name for r in runs["gender"]] == ["member0", "member1"] and all(is_bundled(r) for r in runs["gender"])
    assert output_dir(runs["gender"][0]) != output_dir(runs["gender"][1])  # each member its own cache folder
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for bundled, original in zip(runs["gender"], members):
        with torch.inference_mode():
            expected, got = (load_run(r).model(images).float().softmax(1) for r in (original, bundled))
        assert (expected - got).abs().max() < 0.05
