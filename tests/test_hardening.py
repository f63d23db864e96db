"""Bad input met before any work: ImageIDs that leave eval/images, outputs that cannot be written, option values
out of range. Each is one line naming the value or file, exit code 1, and nothing written."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY_TRAIN, cli, edit_csv, untrained_run
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
