"""extra_data: folders of images/ + labels.csv that add training rows to the tasks whose label they carry."""
from __future__ import annotations

import pickle
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from maskcls.cli import app
from maskcls.config import ConfigError, load_config
from maskcls.data import DataError
from maskcls.data import crop as crop_module
from maskcls.data.crop import build_train_image_loader, read_manifest, resolve_cache_dir
from maskcls.data.faces import CropSettings
from maskcls.data.extra import check_extra, extra_images, sample_weights, with_extra
from maskcls.data.sample import make_sample_dataset, make_sample_extra
from maskcls.engine import build_datasets, fit
from maskcls.tasks import TASKS
from test_crop import FixedDetector

TINY = ["backbone=test_efficientnet", "pretrained=none", "crop=none", "warmup_epochs=1",
        "img_size=32", "batch_size=16", "workers=0", "folds=3", "epochs=1",
        "preload=false"]
MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_sample_dataset(tmp_path_factory.mktemp("faces"), people=12, eval_people=2, size=(48, 64))


@pytest.fixture
def mixed_extra(tmp_path):
    """12 faces: 0-2 carry only an age, 3-5 only a gender, 6-8 only a mask, 9-11 all three."""
    folder = make_sample_extra(tmp_path / "extra", faces=12, size=(48, 64), columns=("age", "gender", "mask"))
    table = pd.read_csv(folder / "labels.csv", dtype=str, keep_default_na=False)
    for rows, keep in [(slice(0, 2), "age"), (slice(3, 5), "gender"), (slice(6, 8), "mask")]:
        for column in ("age", "gender", "mask"):
            if column != keep:
                table.loc[rows, column] = ""
    table.to_csv(folder / "labels.csv", index=False)
    return folder


def files_of(paths) -> set[str]:
    return {p.rsplit("/", 1)[-1] for p in paths}


@pytest.mark.parametrize("task, faces", [("age", {0, 1, 2, 9, 10, 11}), ("gender", {3, 4, 5, 9, 10, 11}),
                                         ("mask", {6, 7, 8, 9, 10, 11}), ("joint", {9, 10, 11})])
def test_extra_rows_reach_only_the_tasks_whose_label_they_carry(mixed_extra, task, faces):
    rows = extra_images([mixed_extra], TASKS[task].labels, (30, 60))
    assert files_of(rows["path"]) == {f"extra_{k:05d}.jpg" for k in faces}
    assert (rows[TASKS[task].label_column] >= 0).all() and rows["extra"].all()
    assert rows["person"].is_unique  # each extra image is its own person


@pytest.mark.parametrize("task", ["age", "mask"])
def test_validation_never_holds_extra_rows_and_training_gets_them(tiny_data, mixed_extra, tmp_path, task):
    plain = build_datasets(load_config(task, [*TINY, f"data_dir={tiny_data}"]), *MEAN_STD)
    config = load_config(task, [*TINY, f"data_dir={tiny_data}", f"extra_data={mixed_extra}"])
    data = build_datasets(config, *MEAN_STD)
    assert plain.val.paths == data.val.paths and not any(str(mixed_extra) in p for p in data.val.paths)
    extra = [p for p in data.train.paths if str(mixed_extra) in p]
    assert len(extra) == 6 and data.train.paths[:len(plain.train.paths)] == plain.train.paths
    assert len(data.train.targets) == len(data.train.paths) and data.train.targets.min() >= 0


def test_a_tiny_run_trains_on_extra_faces_with_year_targets(tiny_data, tmp_path):
    extra = make_sample_extra(tmp_path / "extra", faces=8, size=(48, 64))
    run_dir = fit(load_config("age", [*TINY, f"data_dir={tiny_data}", f"project={tmp_path}", f"extra_data={extra}",
                                      "age_target=years", "age_sigma=2", "extra_weight=3"]))
    assert np.isfinite(pd.read_csv(run_dir / "results.csv")["train_loss"]).all()


def test_extra_limit_and_extra_weight(tiny_data, mixed_extra):
    config = load_config("age", [*TINY, f"data_dir={tiny_data}", f"extra_data={mixed_extra}", "extra_limit=4"])
    rows = extra_images(config.extra_data, ("age",), config.age_bounds, config.extra_limit, config.seed)
    assert len(rows) == 4 and rows.equals(extra_images(config.extra_data, ("age",), (30, 60), 4, config.seed))
    images = with_extra(pd.DataFrame({"age_band": [0, 1], "path": ["a", "b"]}), config, ("age",))
    assert images["extra"].tolist() == [False, False, True, True, True, True]
    assert sample_weights(images, images["age_band"].to_numpy(), 3, config) is None  # all equal: plain shuffle
    weighted = load_config("age", [f"extra_data={mixed_extra}", "extra_weight=0.5", "sampler=weighted"])
    weights = sample_weights(images, images["age_band"].to_numpy(), 3, weighted)
    band_counts = np.bincount(images["age_band"], minlength=3)
    assert np.allclose(weights, np.where(images["extra"], 0.5, 1.0) / band_counts[images["age_band"]])
    for bad in ("extra_weight=0", "extra_limit=-1"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config("age", [bad])


def test_a_task_without_rows_in_an_extra_folder_is_an_error(tiny_data, tmp_path):
    extra = make_sample_extra(tmp_path / "extra", faces=3, size=(48, 64), columns=("age",))
    config = load_config("mask", [*TINY, f"data_dir={tiny_data}", f"extra_data={extra}"])
    with pytest.raises(DataError, match="labels.csv: no row carries mask"):
        build_datasets(config, *MEAN_STD)


def break_folder(folder, case):
    """Make one bad-input case of an extra folder; returns the message its check must give."""
    csv = folder / "labels.csv"
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    first = table["file"].iloc[0]
    if case == "folder":
        shutil.rmtree(folder)
        return "extra data folder does not exist"
    if case == "images":
        shutil.rmtree(folder / "images")
        return "images: folder is missing"
    if case == "labels":
        csv.unlink()
        return "labels.csv: file is missing"
    if case == "empty_csv":
        csv.write_text("")
        return "cannot be read as CSV"
    if case == "no_rows":
        csv.write_text("file,age\n")
        return "labels.csv: no rows"
    edits = {"file_column": ("file", None, "missing column file"),
             "no_label": ("labels", None, "no label column: expected any of age, gender, mask"),
             "missing_file": ("file", "gone.jpg", "line 2: gone.jpg: no image file"),
             "fractional_age": ("age", "31.5", f"line 2: {first}: age '31.5' is not a whole number 0-120"),
             "old_age": ("age", "121", "age '121' is not a whole number 0-120"),
             "word_age": ("age", "thirty", "age 'thirty' is not a whole number"),
             "gender": ("gender", "M", f"line 2: {first}: gender 'M' is not one of male, female"),
             "mask": ("mask", "worn", f"line 2: {first}: mask 'worn' is not one of wear, incorrect, not_wear"),
             "outside": ("file", "../labels.csv", "line 2: ../labels.csv: file must name an image inside images/"),
             "twice": ("file", table["file"].iloc[1], "line 3: %s: file listed twice" % table["file"].iloc[1])}
    column, value, message = edits[case]
    if value is None:
        table = table.drop(columns=["age", "gender", "mask"] if column == "labels" else [column])
    elif case == "twice":
        table.loc[0, "file"] = value
        table.loc[1, "file"] = value
        message = f"line 3: {value}: file listed twice"
    else:
        table.loc[0, column] = value
    table.to_csv(csv, index=False)
    return message


CASES = ["folder", "images", "labels", "empty_csv", "no_rows", "file_column", "no_label", "missing_file",
         "fractional_age", "old_age", "word_age", "gender", "mask", "outside", "twice"]


@pytest.mark.parametrize("case", CASES)
def test_every_bad_input_of_an_extra_folder_gets_its_message(tmp_path, case):
    folder = make_sample_extra(tmp_path / "extra", faces=3, size=(48, 64), columns=("age", "gender", "mask"))
    message = break_folder(folder, case)
    problems = [str(p) for p in check_extra(folder, decode=False)]
    assert any(message in p for p in problems), problems
    result = CliRunner().invoke(app, ["data", "check", str(folder), "--no-decode"])
    assert result.exit_code == 1 and (message if case != "folder" else "folder does not exist") in result.output
    if case not in ("folder", "images", "labels"):
        with pytest.raises(DataError, match="labels.csv"):
            extra_images([folder], ("age",), (30, 60))


def test_data_check_of_an_extra_folder_decodes_each_image_and_passes_a_good_one(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKCLS_NO_PROGRESS", "1")
    folder = make_sample_extra(tmp_path / "extra", faces=3, size=(48, 64))
    good = CliRunner().invoke(app, ["data", "check", str(folder)])
    assert good.exit_code == 0 and f"{folder}: ok" in good.output
    (folder / "images" / "extra_00001.jpg").write_bytes(b"not a jpeg")
    bad = CliRunner().invoke(app, ["data", "check", str(folder)])
    assert bad.exit_code == 1 and "extra_00001.jpg: image does not decode" in bad.output


def test_extra_faces_are_cropped_and_cached_beside_their_folder(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(crop_module, "create_detectors", lambda settings, device=None: [FixedDetector()])
    monkeypatch.setenv("MASKCLS_NO_PROGRESS", "1")
    data = shutil.copytree(tiny_data, tmp_path / "faces")
    extra = make_sample_extra(tmp_path / "extra", faces=4, size=(48, 64))
    result = CliRunner().invoke(app, ["crop", str(data), "--detector", "mtcnn", "--extra", str(extra)])
    assert result.exit_code == 0, result.output
    assert "/4 faces detected" in result.output and "/84 faces detected" in result.output  # extra, then train
    main_manifest = read_manifest(resolve_cache_dir(data))
    extra_manifest = read_manifest(resolve_cache_dir(extra))
    assert resolve_cache_dir(extra) == tmp_path / ".maskcls_cache" / "extra"
    assert set(extra_manifest) == {f"images/extra_{k:05d}.jpg" for k in range(4)}
    assert not any(key.startswith("images/") for key in main_manifest)  # the dataset's cache is as before

    config = load_config("age", [f"data_dir={data}", f"extra_data={extra}", "crop=faces", "crop_detector=mtcnn"])
    loader = pickle.loads(pickle.dumps(build_train_image_loader(config)))
    monkeypatch.setattr(crop_module, "create_detectors", lambda *a, **k: pytest.fail("the cache should be used"))
    source = extra / "images" / "extra_00002.jpg"
    image = crop_module.open_rgb(source)
    cached_face = crop_module.entry_face(extra_manifest["images/extra_00002.jpg"])
    expected = image.crop(crop_module.crop_box(cached_face, image.size, CropSettings.from_config(config)))
    assert np.array_equal(np.asarray(loader(str(source))), np.asarray(expected))
    main_image = next((data / "train" / "images").rglob("mask1.jpg"))
    main_face = crop_module.entry_face(main_manifest[main_image.relative_to(data).as_posix()])
    left, top, right, bottom = crop_module.crop_box(main_face, crop_module.open_rgb(main_image).size,
                                                    CropSettings.from_config(config))
    assert loader(str(main_image)).size == (right - left, bottom - top)


def test_a_face_filling_an_extra_image_is_cropped_not_refused_for_its_size(tiny_data, tmp_path):
    """Aligned face crops (UTKFace's) hold a face spanning 0.8-1.0 of the side: in a dataset that size is a
    whole-head box to refuse, in an extra folder it is the face (else the centre fallback would cut it)."""
    from maskcls.data.crop import folder_settings
    from maskcls.data.faces import CropSettings, pick_faces
    from maskcls.data.images import open_rgb

    extra = make_sample_extra(tmp_path / "extra", faces=4, size=(100, 100))
    images = [open_rgb(p) for p in sorted((extra / "images").iterdir())]
    border = round(CropSettings.pad * 100)
    detector = FixedDetector(box=(border + 2.0, border + 2.0, border + 97.0, border + 98.0))  # 0.95 of the side
    as_dataset = folder_settings(CropSettings(), tiny_data)
    as_extra = folder_settings(CropSettings(), extra)
    assert as_dataset == CropSettings() and as_extra.max_face_fraction > 1.0
    assert all(face is None for face, _ in pick_faces(images, as_dataset, [detector]))
    assert all(face is not None and number == 1 for face, number in pick_faces(images, as_extra, [detector]))
