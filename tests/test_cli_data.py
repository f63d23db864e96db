"""The ``maskcls`` command line through typer's CliRunner: exit codes and what it prints."""
from __future__ import annotations

import pandas as pd
import pytest
from conftest import SAMPLE_PEOPLE, profile_folders, truncate
from typer.testing import CliRunner

from maskcls.cli import app
from maskcls.config import load_config
from maskcls.data import check_dataset
from maskcls.runs import expand_runs

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def no_progress_bars(monkeypatch):
    monkeypatch.setenv("MASKCLS_NO_PROGRESS", "1")


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_help_lists_the_commands():
    result = run("--help")
    assert result.exit_code == 0
    assert "data" in result.stdout and "demo" in result.stdout
    result = run("data", "--help")
    assert result.exit_code == 0
    for command in ("check", "summary", "sample"):
        assert command in result.stdout


@pytest.mark.parametrize("args", [(), ("data",)])
def test_no_arguments_shows_help(args):
    result = run(*args)
    assert "Usage" in result.stdout and "Commands" in result.stdout
    assert result.exit_code == 2  # click's no_args_is_help is a usage error


def test_unknown_command_and_missing_argument_are_usage_errors():
    assert run("dta").exit_code == 2
    assert run("data", "check").exit_code == 2


def test_check_passes_on_a_valid_dataset(sample_dataset):
    result = run("data", "check", sample_dataset)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{sample_dataset}: ok"
    assert result.stderr == ""


def test_check_fails_naming_every_bad_file(dataset_copy):
    folders = profile_folders(dataset_copy)
    truncated = truncate(folders[0] / "mask1.jpg")
    (folders[1] / "mask5.jpg").unlink()
    result = run("data", "check", dataset_copy)
    assert result.exit_code == 1
    errors = result.stderr.splitlines()
    assert f"error: {truncated}: image does not decode" in "\n".join(errors)
    assert any(line.startswith(f"error: {folders[1] / 'mask5'}: missing image mask5") for line in errors)
    assert errors[-1] == f"{dataset_copy}: 2 problem(s)"
    assert "ok" not in result.stdout


def test_check_no_decode_skips_the_pixels(dataset_copy):
    truncate(profile_folders(dataset_copy)[0] / "mask1.jpg")
    assert run("data", "check", dataset_copy, "--no-decode").exit_code == 0
    assert run("data", "check", dataset_copy, "--decode").exit_code == 1


def test_check_missing_folder(tmp_path):
    result = run("data", "check", tmp_path / "nope")
    assert result.exit_code == 1
    assert "dataset folder does not exist" in result.stderr


def test_summary_prints_counts_and_writes_the_png(sample_dataset, tmp_path):
    out = tmp_path / "plots" / "classes.png"
    result = run("data", "summary", sample_dataset, "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{SAMPLE_PEOPLE} people, {SAMPLE_PEOPLE * 7} images; races: ")
    assert "people per gender x age band:" in result.stdout
    total_row = next(line for line in result.stdout.splitlines() if line.startswith("total"))
    assert total_row.split()[-1] == str(SAMPLE_PEOPLE)
    assert f"wrote {out}" in result.stdout
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_summary_png_defaults_beside_the_dataset(dataset_copy):
    result = run("data", "summary", dataset_copy)
    assert result.exit_code == 0, result.output
    png = dataset_copy.parent / f"{dataset_copy.name}_classes.png"
    assert png.read_bytes().startswith(PNG_MAGIC)


def class_line(stdout: str, number: int) -> int:
    """The image count printed for class ``number`` in the per-class table."""
    line = next(line for line in stdout.splitlines() if line.startswith(f"{number:2d} "))
    return int(line.split()[-1])


def test_summary_applies_age_bounds_and_label_fixes(dataset_copy, tmp_path):
    folder = next(f for f in profile_folders(dataset_copy) if "_male_" in f.name)
    fixes = tmp_path / "fixes.yaml"
    fixes.write_text(f'gender: {{"{folder.name.split("_")[0]}": female}}\n')
    plain = run("data", "summary", dataset_copy, "--out", tmp_path / "a.png")
    fixed = run("data", "summary", dataset_copy, "--out", tmp_path / "b.png", "--label-fixes", fixes)
    assert plain.exit_code == fixed.exit_code == 0, fixed.output
    female_images = [sum(class_line(r.stdout, k) for k in range(18) if k % 6 >= 3) for r in (plain, fixed)]
    assert female_images[1] == female_images[0] + 7  # one person's seven images move from male to female
    moved = run("data", "summary", dataset_copy, "--out", tmp_path / "c.png", "--age-bounds", "30,31")
    assert moved.exit_code == 0
    old_images = [sum(class_line(r.stdout, k) for k in range(2, 18, 3)) for r in (plain, moved)]
    assert old_images[1] > old_images[0]


def test_summary_on_a_broken_dataset_is_one_line(dataset_copy, tmp_path):
    (profile_folders(dataset_copy)[0] / "mask2.jpg").unlink()
    result = run("data", "summary", dataset_copy, "--out", tmp_path / "x.png")
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: ") and "mask2" in result.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("bounds", ["60,30", "30", "30,60,90", "x,60"])
def test_summary_rejects_bad_age_bounds_in_one_line(sample_dataset, tmp_path, bounds):
    result = run("data", "summary", sample_dataset, "--out", tmp_path / "x.png", "--age-bounds", bounds)
    assert result.exit_code == 1
    assert result.stderr == f"error: --age-bounds {bounds}: expected two increasing whole numbers, such as 30,60\n"


def test_summary_with_a_bad_fixes_file(sample_dataset, tmp_path):
    result = run("data", "summary", sample_dataset, "--out", tmp_path / "x.png", "--label-fixes", tmp_path / "no.yaml")
    assert result.exit_code == 1
    assert "label-fixes file does not exist" in result.stderr


def test_sample_writes_a_dataset_that_checks(tmp_path):
    out = tmp_path / "tiny"
    result = run("data", "sample", out, "--people", "3", "--eval-people", "1", "--seed", "5")
    assert result.exit_code == 0, result.output
    assert "wrote 3 train and 1 eval people" in result.stdout
    assert len(profile_folders(out)) == 3
    assert check_dataset(out) == []


def test_demo_runs_the_main_job(tmp_path):
    result = run("demo", "--out-dir", tmp_path, "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert f"{tmp_path / 'faces'}: ok" in result.stdout
    assert "60 people, 420 images" in result.stdout
    assert (tmp_path / "faces_classes.png").read_bytes().startswith(PNG_MAGIC)
    for task in ("mask", "age", "gender"):  # the configs' ensembles: every member trained
        members = expand_runs([tmp_path / "runs" / task / "demo"])
        assert len(members) == load_config(task).ensemble and all((m / "best.pt").is_file() for m in members)
    assert f"views orig+flip+{'+'.join(load_config('mask').tta)}" in result.stdout
    submission = pd.read_csv(tmp_path / "submission.csv")
    info = pd.read_csv(tmp_path / "faces" / "eval" / "info.csv")
    assert submission["ImageID"].tolist() == info["ImageID"].tolist()
    assert submission["ans"].between(0, 17).all()
    assert "18-class macro F1" in result.stdout


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # pytest lifts open_rgb's own filter
def test_check_names_a_large_image_and_its_size_and_refuses_one_past_the_bomb_limit(dataset_copy, monkeypatch):
    from PIL import Image

    folders = profile_folders(dataset_copy)
    large, bomb = folders[0] / "mask1.jpg", folders[1] / "mask1.jpg"
    Image.new("RGB", (130, 130)).save(large)  # 16900 pixels: over the limit, under twice it
    Image.new("RGB", (160, 160)).save(bomb)  # 25600 pixels: over twice the limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 96 * 128)  # the sample images' size
    result = run("data", "check", dataset_copy)
    assert result.exit_code == 1  # the bomb alone
    lines = result.output.splitlines()
    assert f"warning: {large}: large image: 130 x 130 pixels (0 megapixels); it decodes, slowly" in lines
    assert any(line.startswith(f"error: {bomb}: not decoded, a possible decompression bomb") for line in lines)
    assert f"{dataset_copy}: 1 problem(s)" in lines
    assert "Traceback" not in result.output
