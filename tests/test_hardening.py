"""Bad input met before any work: ImageIDs that leave eval/images, outputs that cannot be written, option values
out of range. Each is one line naming the value or file, exit code 1, and nothing written."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY_TRAIN, cli, edit_csv, truncate, untrained_run
from maskcls.data import check_dataset, read_eval_images
from maskcls.errors import DataError


def one_line_error(result, *needles) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert str(needle) in lines[0], lines[0]


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


# --- eval/info.csv ImageIDs stay inside eval/images ---------------------------------------------------------------

@pytest.mark.parametrize("image_id", ["/etc/hostname", "../info.csv", "sub/x.jpg", "..", "a\\b.jpg", ""])
def test_an_image_id_that_is_not_a_plain_name_in_eval_images_is_refused(dataset_copy, image_id):
    info = dataset_copy / "eval" / "info.csv"
    edit_csv(info, lambda t: t.assign(ImageID=[image_id, *t["ImageID"][1:]]))
    with pytest.raises(DataError, match=rf"{info}: line 2: ImageID .* is not a plain file name in "):
        read_eval_images(dataset_copy)
    problems = [str(p) for p in check_dataset(dataset_copy)]  # data check names it, and opens nothing outside
    assert any("line 2: ImageID" in p and "not a plain file name" in p for p in problems), problems


def test_a_link_out_of_eval_images_is_refused_and_one_inside_is_read(dataset_copy, tmp_path):
    images = dataset_copy / "eval" / "images"
    first, second = sorted(images.iterdir())[:2]
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(first.read_bytes())
    first.unlink()
    first.symlink_to(outside)
    with pytest.raises(DataError, match=rf"line \d+: ImageID '{first.name}' is a link to {outside}, outside {images}"):
        read_eval_images(dataset_copy)
    first.unlink()
    first.symlink_to(second.name)  # a link to another image of the folder is that image
    assert Path(read_eval_images(dataset_copy).set_index("ImageID")["path"][first.name]) == first


def test_predict_names_the_bad_row_in_one_line(dataset_copy, tmp_path):
    run = untrained_run(tmp_path / "runs", "mask", TINY_TRAIN)
    info = dataset_copy / "eval" / "info.csv"
    edit_csv(info, lambda t: t.assign(ImageID=[*t["ImageID"][:2], "../../train/train.csv", *t["ImageID"][3:]]))
    out = tmp_path / "pred.csv"
    one_line_error(cli("predict", "mask", run, dataset_copy, "--out", out), f"{info}: line 4: ImageID "
                                                                             f"'../../train/train.csv'")
    assert not out.exists()


# --- option values out of range -----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, option, value", [
    (["detect", "x.jpg", "--min-face", "0"], "--min-face", 0),  # was a ZeroDivisionError
    (["detect", "x.jpg", "--min-face", "-5"], "--min-face", -5),
    (["detect", "x.jpg", "--min-prob", "5"], "--min-prob", 5),
    (["detect", "x.jpg", "--max-side", "-1"], "--max-side", -1),
    (["crop", "data", "--batch-size", "0"], "--batch-size", 0),
    (["crop", "data", "--margin", "-1"], "--margin", -1),
    (["crop", "data", "--fallback", "0"], "--fallback", 0),
    (["audit", "data", "--top", "-1"], "--top", -1),
    (["demo", "--epochs", "0"], "--epochs", 0),
    (["data", "synth", "out", "--people", "0"], "--people", 0),
])
def test_an_option_out_of_its_range_is_one_line_before_any_work(tmp_path, monkeypatch, args, option, value):
    monkeypatch.chdir(tmp_path)
    one_line_error(cli(*args), option, f"(got {value})")
    assert not any(tmp_path.iterdir())


def test_a_missing_argument_stays_a_usage_error():
    assert cli("data", "check").exit_code == 2


# --- outputs that cannot be written are refused before the work ---------------------------------------------------

@pytest.fixture
def blocked(tmp_path) -> Path:
    """A regular file where an output folder would go: refused even for root, whom chmod does not stop."""
    path = tmp_path / "file"
    path.write_text("in the way")
    return path


def test_outputs_under_a_file_are_refused_naming_the_folder(sample_dataset, tmp_path, blocked):
    run = untrained_run(tmp_path / "runs", "mask", TINY_TRAIN)
    project = tmp_path / "runs"
    before = files_under(tmp_path)
    cases = [
        (["predict", "mask", run, sample_dataset, "--out", blocked / "p.csv"], blocked / "p.csv"),
        (["submit", "--mask", run, "--age", run, "--gender", run, "--out", blocked / "s.csv"], blocked / "s.csv"),
        (["detect", sample_dataset / "eval" / "images", "--project", project, "--out", blocked / "d.csv"],
         blocked / "d.csv"),
        (["detect", sample_dataset / "eval" / "images", "--project", project, "--out", tmp_path / "d.csv",
          "--annotate", blocked / "drawn"], blocked / "drawn"),
        (["train", "mask", *TINY_TRAIN, f"data_dir={sample_dataset}", f"project={blocked / 'runs'}"],
         blocked / "runs"),
        (["crop", sample_dataset, "--cache-dir", blocked / "cache"], blocked / "cache"),
        (["data", "synth", blocked / "faces"], blocked / "faces"),
    ]
    for args, where in cases:
        one_line_error(cli(*args), f"{where if where.suffix != '.csv' else where.parent}", "is a file")
    assert files_under(tmp_path) == before


def test_an_output_path_that_is_a_folder_is_refused(sample_dataset, tmp_path):
    run = untrained_run(tmp_path / "runs", "mask", TINY_TRAIN)
    one_line_error(cli("predict", "mask", run, sample_dataset, "--out", tmp_path), f"{tmp_path}: is a folder")
    (run / "pred_eval_soft3.csv").mkdir()  # where submit keeps the probabilities of these three runs voted
    one_line_error(cli("submit", "--mask", run, "--mask", run, "--mask", run, "--age", run, "--gender", run, "--data-dir", sample_dataset,
                       "--out", tmp_path / "s.csv"), f"{run / 'pred_eval_soft3.csv'}: is a folder")
    assert not (tmp_path / "s.csv").exists() and not (run / "pred_eval.csv").exists()  # refused before any task ran
    (run / "best.onnx").mkdir()
    one_line_error(cli("export", "onnx", "--joint", run), f"{run / 'best.onnx'}: is a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_an_unwritable_folder_is_refused(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        one_line_error(cli("data", "synth", folder), f"{folder}: folder is not writable")
        one_line_error(cli("data", "synth", folder / "faces"), f"{folder / 'faces'}: cannot be made, {folder} is not "
                                                                f"writable")
    finally:
        folder.chmod(0o700)


# --- checkpoints that are not maskcls's, or damaged ---------------------------------------------------------------

def test_a_damaged_or_foreign_checkpoint_is_one_line(sample_dataset, tmp_path):
    import argparse
    import collections

    import torch

    from maskcls.checkpoint import load_checkpoint
    from maskcls.errors import CheckpointError

    run = untrained_run(tmp_path / "runs", "mask", TINY_TRAIN)
    best = run / "best.pt"
    truncate(best)
    one_line_error(cli("predict", "mask", run, sample_dataset), f"checkpoint {best} is damaged (truncated?)")
    best.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is damaged"):
        load_checkpoint(best)
    torch.save(collections.OrderedDict(a=torch.zeros(2)), best)  # a plain state dict: no config
    one_line_error(cli("predict", "mask", run, sample_dataset), f"{best}: not a maskcls checkpoint")
    torch.save(argparse.Namespace(lr=0.1), best)  # pickled objects: torch would advise weights_only=False
    one_line_error(cli("predict", "mask", run, sample_dataset), f"{best}: not a maskcls checkpoint")
    best.write_text("hello")
    one_line_error(cli("predict", "mask", run, sample_dataset), f"{best}: not a maskcls checkpoint")
    other = tmp_path / "photos"
    other.mkdir()
    one_line_error(cli("predict", "mask", other, sample_dataset), f"{other}: not a maskcls run (no best.pt")
    one_line_error(cli("train", "mask", "--resume", other), f"{other}: not a maskcls run (no last.pt")
