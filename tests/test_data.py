"""The data layer: parsing the layout, labels, label fixes, the person-level split, and bad input."""
from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE_EVAL_PEOPLE, SAMPLE_PEOPLE, edit_csv, profile_folders, truncate

from maskcls.data import (COMPETITION_FIXES, NUM_CLASSES, DataError, age_band, apply_fixes, check_dataset,
                          class_name, decode, encode, fold_of_people, labelled, load_fixes, load_train,
                          read_eval_images, read_train_images, scan_eval, scan_train, split_images)
from maskcls.data.fixes import resolve_fixes_path
from maskcls.data.images import open_rgb
from maskcls.data.labels import IMAGE_STEMS, soft_age_bands
from maskcls.data.layout import parse_folder
from maskcls.data.summary import class_counts, format_summary, people_counts
from maskcls.tasks import TASKS, get_task

# ---------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("name, expected", [
    ("000001_male_Asian_20", {"id": "000001", "gender": "male", "race": "Asian", "age": 20}),
    ("001498-1_female_Asian_45", {"id": "001498-1", "gender": "female", "race": "Asian", "age": 45}),
    ("006359_male_Hispanic_60", {"id": "006359", "gender": "male", "race": "Hispanic", "age": 60}),  # any word
    ("4_female_Others_100", {"id": "4", "gender": "female", "race": "Others", "age": 100}),
])
def test_parse_folder_reads_id_gender_race_age(name, expected):
    assert parse_folder(name) == expected


@pytest.mark.parametrize("name", [
    "000001_man_Asian_20", "000001_male_Asian", "000001_male_Asian_twenty", "000001-male-Asian-20",
    "000001_male_Asian_20_extra", "_male_Asian_20", "000001_male__20", "",
])
def test_parse_folder_rejects_other_names(name):
    assert parse_folder(name) is None


def test_sample_dataset_is_valid_and_complete(sample_dataset):
    assert check_dataset(sample_dataset) == []
    images = load_train(sample_dataset)
    assert images["person"].nunique() == SAMPLE_PEOPLE
    assert len(images) == SAMPLE_PEOPLE * len(IMAGE_STEMS)
    assert sorted(images.groupby("person").size().unique()) == [len(IMAGE_STEMS)]
    assert images["label"].between(0, NUM_CLASSES - 1).all()
    # five masks worn, one incorrect, one bare face per person
    assert images.groupby("person")["mask"].apply(sorted).map(tuple).unique().tolist() == [(0, 0, 0, 0, 0, 1, 2)]
    evals = read_eval_images(sample_dataset)
    assert len(evals) == SAMPLE_EVAL_PEOPLE * len(IMAGE_STEMS)
    assert all(Path(p).is_file() for p in evals["path"])


def test_folder_meta_becomes_labels(sample_dataset):
    images = load_train(sample_dataset)
    for folder in profile_folders(sample_dataset):
        meta = parse_folder(folder.name)
        rows = images[images["person"] == meta["id"]]
        assert set(rows["gender"]) == {0 if meta["gender"] == "male" else 1}
        assert set(rows["age"]) == {meta["age"]}
        assert set(rows["race"]) == {meta["race"]}
        by_stem = dict(zip(rows["stem"], rows["mask"]))
        assert by_stem["normal"] == 2 and by_stem["incorrect_mask"] == 1 and by_stem["mask3"] == 0


@pytest.mark.parametrize("ext", [".jpg", ".jpeg", ".png", ".JPG", ".Png"])
def test_every_image_extension_is_read(dataset_copy, ext):
    folder = profile_folders(dataset_copy)[0]
    for path in folder.iterdir():
        path.rename(path.with_suffix(ext))
    images, problems = scan_train(dataset_copy)
    assert problems == []
    paths = images.loc[images["person"] == parse_folder(folder.name)["id"], "path"]
    assert len(paths) == len(IMAGE_STEMS) and all(p.endswith(ext) for p in paths)
    assert check_dataset(dataset_copy) == []  # the pixels still decode whatever the extension says


def test_dot_files_and_dot_folders_are_ignored(dataset_copy):
    folder = profile_folders(dataset_copy)[0]
    (folder / "._mask1.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork: not an image
    (folder / ".DS_Store").write_bytes(b"junk")
    (folder.parent / ".DS_Store").write_bytes(b"junk")
    hidden = folder.parent / f"._{folder.name}"
    hidden.mkdir()
    (hidden / "mask1.jpg").write_bytes(b"junk")
    assert check_dataset(dataset_copy) == []
    assert len(read_train_images(dataset_copy)) == SAMPLE_PEOPLE * len(IMAGE_STEMS)


def test_open_rgb_converts_to_rgb_and_names_bad_files(sample_dataset, tmp_path):
    png = next((sample_dataset / "train" / "images").glob("*/normal.png"))
    assert open_rgb(png).mode == "RGB"
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match=f"{bad}: image does not decode"):
        open_rgb(bad)
    with pytest.raises(DataError, match="image file is missing"):
        open_rgb(tmp_path / "nothing.jpg")


# ------------------------------------------------------------------------------------------ the image reader

def _grey_ramp(mode: str):
    """A 16 x 16 grey ramp from black to white in ``mode``'s own range of levels."""
    from PIL import Image

    ramp = np.linspace(0, 1, 256).reshape(16, 16)
    if mode == "F":
        return Image.fromarray(ramp.astype(np.float32), "F")
    levels = (ramp * 65535).round()
    if mode == "I":
        return Image.fromarray(levels.astype(np.int32), "I")
    return Image.frombytes(mode, (16, 16), levels.astype(">u2" if mode == "I;16B" else "<u2").tobytes())


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_sixteen_bit_grey_is_scaled_to_eight_bits_not_clipped_to_white(mode):
    from maskcls.data.images import to_rgb

    image = to_rgb(_grey_ramp(mode))
    array = np.asarray(image)
    assert image.mode == "RGB" and array[0, 0].tolist() == [0, 0, 0] and array[-1, -1].tolist() == [255, 255, 255]
    assert abs(int(array[8, 0, 0]) - 128) <= 1  # mid-grey stays mid-grey


def test_a_sixteen_bit_png_file_reads_as_its_grey_levels(tmp_path):
    path = tmp_path / "deep.png"
    _grey_ramp("I;16").save(path)
    array = np.asarray(open_rgb(path))
    assert array.mean() == pytest.approx(127.5, abs=1) and array.max() == 255


def test_floating_point_pixels_are_refused_in_one_line():
    from maskcls.data.images import to_rgb

    with pytest.raises(DataError, match=r"^scan.tif: pixel mode F is not read"):
        to_rgb(_grey_ramp("F"), "scan.tif")


@pytest.mark.parametrize("mode", ["LA", "RGBA", "P"])
def test_transparent_pixels_are_laid_on_white(tmp_path, mode):
    from PIL import Image

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (200, 30, 30, 255)  # opaque red on the left, transparent black on the right
    image = Image.fromarray(rgba, "RGBA")
    if mode == "LA":
        image = image.convert("LA")
    elif mode == "P":
        image = image.quantize(2)
        image.info["transparency"] = image.getpixel((7, 0))  # the right half's palette index
    path = tmp_path / "cutout.png"
    image.save(path)
    array = np.asarray(open_rgb(path))
    assert array[0, 7].tolist() == [255, 255, 255]  # not the black the transparent pixels store
    assert array[0, 0].tolist() != [255, 255, 255]


def test_a_cmyk_jpeg_reads_as_rgb(tmp_path):
    from PIL import Image

    path = tmp_path / "print.jpg"
    Image.new("RGB", (16, 16), (200, 30, 30)).convert("CMYK").save(path, quality=100)
    image = open_rgb(path)
    assert image.mode == "RGB"
    assert np.abs(np.asarray(image, np.int64)[8, 8] - (200, 30, 30)).max() <= 8


@pytest.mark.parametrize("kind, header", [("EPS", b"%!PS-Adobe-3.0 EPSF-3.0\n"), ("GIF", None), ("TIFF", None),
                                          ("BMP", None)])
def test_a_format_outside_the_accepted_ones_is_refused_without_opening_it(tmp_path, monkeypatch, kind, header):
    from PIL import EpsImagePlugin, Image

    from maskcls.data.images import ACCEPTED_FORMATS

    path = tmp_path / f"photo.{kind.lower()}"
    if header:
        path.write_bytes(header + b"%%BoundingBox: 0 0 16 16\n")
    else:
        Image.new("RGB", (16, 16)).save(path, kind)
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: pytest.fail("the EPS plugin started"))
    with pytest.raises(DataError, match=rf"^{path}: {kind} images are not read \(accepted: JPEG, PNG, WEBP\)$"):
        open_rgb(path)
    assert kind not in ACCEPTED_FORMATS


def test_accepted_formats_and_the_photo_suffixes_agree(tmp_path):
    from PIL import Image

    from maskcls.data.images import ACCEPTED_FORMATS, PHOTO_SUFFIXES

    extensions = Image.registered_extensions()
    assert {extensions[suffix] for suffix in PHOTO_SUFFIXES} == set(ACCEPTED_FORMATS)
    for name in ACCEPTED_FORMATS:  # each reads, WebP included
        path = tmp_path / f"face.{name.lower()}"
        Image.new("RGB", (16, 12), (10, 20, 30)).save(path, name, lossless=True)
        assert open_rgb(path).size == (16, 12)


def test_a_bounded_copy_of_a_large_jpeg_is_decoded_reduced_and_keeps_the_orientation(tmp_path):
    from PIL import Image

    from maskcls.data.images import open_bounded

    path = tmp_path / "huge.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: read 90 degrees the other way
    Image.new("RGB", (4000, 3000), (90, 90, 90)).save(path, exif=exif)
    copy, size = open_bounded(path, 1000)
    assert size == (3000, 4000) and copy.size == (750, 1000)
    small = tmp_path / "small.png"
    Image.new("RGB", (300, 200)).save(small)
    copy, size = open_bounded(small, 1000)
    assert size == copy.size == (300, 200) and np.array_equal(np.asarray(copy), np.asarray(open_rgb(small)))


# ---------------------------------------------------------------------------------------------- labels


def test_encode_decode_round_trip_for_all_18_classes():
    triples = list(itertools.product(range(3), range(2), range(3)))
    assert [encode(*t) for t in triples] == list(range(NUM_CLASSES))  # mask * 6 + gender * 3 + age
    for label, triple in enumerate(triples):
        assert decode(label) == triple
        assert encode(*decode(label)) == label
    masks, genders, ages = decode(np.arange(NUM_CLASSES))
    np.testing.assert_array_equal(encode(masks, genders, ages), np.arange(NUM_CLASSES))
    assert len({class_name(i) for i in range(NUM_CLASSES)}) == NUM_CLASSES
    assert class_name(0) == "wear/male/<30" and class_name(17) == "not_wear/female/old"


@pytest.mark.parametrize("label", [-1, 18, 100])
def test_decode_rejects_out_of_range(label):
    with pytest.raises(ValueError, match="0..17"):
        decode(label)


@pytest.mark.parametrize("age, bounds, band", [
    (18, (30, 60), 0), (29, (30, 60), 0), (30, (30, 60), 1), (59, (30, 60), 1), (60, (30, 60), 2),
    (58, (30, 59), 1), (59, (30, 59), 2),  # the winners' edge: 59 already trains as "old"
    (57, (30, 58), 1), (58, (30, 58), 2),
])
def test_age_band_thresholds(age, bounds, band):
    assert age_band(age, bounds) == band


def test_age_band_defaults_and_arrays():
    np.testing.assert_array_equal(age_band(np.array([29, 30, 59, 60, 75])), [0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="two increasing whole numbers"):
        age_band(40, (60, 30))


def test_labelled_recomputes_band_and_label_from_age_bounds():
    images = pd.DataFrame({"person": ["a", "a"], "age": [59, 59], "gender": [1, 1], "mask": [0, 2]})
    default, moved = labelled(images), labelled(images, (30, 59))
    assert default["age_band"].tolist() == [1, 1] and default["label"].tolist() == [4, 16]
    assert moved["age_band"].tolist() == [2, 2] and moved["label"].tolist() == [5, 17]


def test_soft_age_bands_split_each_age_by_its_distance_to_the_edges():
    soft = soft_age_bands([18, 29, 30, 45, 58, 59, 75], (30, 59), sigma=2.0)
    np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(soft.argmax(1), age_band(np.array([18, 29, 30, 45, 58, 59, 75]), (30, 59)))
    # the edge lies at 29.5: 29 and 30 are mirror images, 59 is "old" under (30, 59)
    assert soft[1, 0] == pytest.approx(soft[2, 1]) and 0.55 < soft[1, 0] < 0.65
    assert soft[0, 0] > 0.999 and soft[3, 1] > 0.999 and soft[6, 2] > 0.999
    assert soft[5, 2] > 0.5 > soft[4, 2] > 0.3
    # a tiny sigma is the hard band
    np.testing.assert_allclose(soft_age_bands([29, 30, 60], (30, 60), 1e-3), np.eye(3)[[0, 1, 2]], atol=1e-6)
    with pytest.raises(ValueError, match="sigma"):
        soft_age_bands([30], (30, 60), 0.0)


def test_soft_targets_keep_mask_and_gender_exact_in_the_joint_classes():
    images = labelled(pd.DataFrame({"person": ["a", "b"], "age": [29, 70], "gender": [1, 0], "mask": [2, 0]}))
    joint = get_task("joint").soft_targets(images, (30, 60), 3.0)
    assert joint.shape == (2, 18)
    np.testing.assert_allclose(joint.sum(1), 1.0, rtol=1e-6)
    # not_wear/female (15..17) for a, wear/male (0..2) for b: all mass there, split over the age bands
    assert joint[0, 15:18].sum() == pytest.approx(1.0) and joint[0, 15] > joint[0, 16] > 0.3
    assert joint[1, 2] > 0.999
    age = get_task("age").soft_targets(images, (30, 60), 3.0)
    np.testing.assert_allclose(age, np.stack([joint[0, 15:18], joint[1, 0:3]]))
    with pytest.raises(ValueError, match="no age band"):
        get_task("gender").soft_targets(images, (30, 60), 3.0)


def test_task_table():
    assert {name: task.num_classes for name, task in TASKS.items()} == {"mask": 3, "gender": 2, "age": 3, "joint": 18}
    assert get_task("age").label_column == "age_band"
    with pytest.raises(ValueError, match="unknown task 'hair'"):
        get_task("hair")


# ---------------------------------------------------------------------------------------------- label fixes


@pytest.fixture(scope="module")
def images(sample_dataset):
    return load_train(sample_dataset)


def write_fixes(tmp_path, text: str) -> Path:
    path = tmp_path / "fixes.yaml"
    path.write_text(text)
    return path


def person_rows(table, pid):
    return table[table["person"] == pid].set_index("stem")


def test_fix_sets_gender(images, sample_dataset, tmp_path):
    pid = images["person"].iloc[0]
    old_gender = int(person_rows(images, pid)["gender"].iloc[0])
    new_name = "male" if old_gender == 1 else "female"
    fixed = load_train(sample_dataset, fixes=write_fixes(tmp_path, f'gender: {{"{pid}": {new_name}}}'))
    rows = person_rows(fixed, pid)
    assert set(rows["gender"]) == {1 - old_gender}
    assert (rows["label"] == encode(rows["mask"], 1 - old_gender, rows["age_band"])).all()
    others = fixed["person"] != pid
    pd.testing.assert_frame_equal(fixed[others], images[others])  # nobody else changes


def test_fix_swaps_incorrect_and_normal(images, tmp_path):
    pid = images["person"].iloc[-1]
    fixed = apply_fixes(images, load_fixes(write_fixes(tmp_path, f'swap_incorrect_normal: ["{pid}"]')))
    rows = person_rows(fixed, pid)
    assert rows.loc["incorrect_mask", "mask"] == 2 and rows.loc["normal", "mask"] == 1
    assert (rows.drop(index=["incorrect_mask", "normal"])["mask"] == 0).all()
    others = fixed["person"] != pid
    pd.testing.assert_frame_equal(fixed[others], images[others])
    assert (images["mask"] != -1).all()  # the input table is not modified


def test_fix_overrides_age_and_band(images, sample_dataset, tmp_path):
    young = images.loc[images["age"] < 30, "person"].iloc[0]
    fixed = load_train(sample_dataset, fixes=write_fixes(tmp_path, f'age: {{"{young}": 61}}'))
    rows = person_rows(fixed, young)
    assert set(rows["age"]) == {61} and set(rows["age_band"]) == {2}
    assert (rows["label"] % 3 == 2).all()


def test_fix_naming_an_absent_profile_warns_and_applies_the_rest(images, tmp_path):
    pid = images["person"].iloc[0]
    path = write_fixes(tmp_path, f'gender: {{"{pid}": female, "999999": male}}\nage: {{"888888": 40}}')
    with pytest.warns(UserWarning, match="2 profile.*888888, 999999"):
        fixed = apply_fixes(images, load_fixes(path))
    assert set(person_rows(fixed, pid)["gender"]) == {1}


def test_competition_fixes_load_and_are_opt_in():
    assert resolve_fixes_path("none") is None and resolve_fixes_path(None) is None
    assert resolve_fixes_path("competition") == COMPETITION_FIXES
    fixes = load_fixes("competition")
    assert fixes.gender["000225"] == 0 and fixes.gender["001498-1"] == 1
    assert len(fixes.gender) == 20 and fixes.swap_incorrect_normal == ("000020", "004418", "005227")
    assert load_fixes("none").ids() == set()


@pytest.mark.parametrize("text, message", [
    ("gender: {000225: male}", "must be a quoted string"),
    ('gender: {"000225": man}', "must be male or female"),
    ('age: {"000225": old}', "whole number of years"),
    ('hair: {"000225": long}', "unknown section"),
    ("gender: [unclosed", "not valid YAML"),
])
def test_bad_fixes_file_names_itself(tmp_path, text, message):
    path = write_fixes(tmp_path, text)
    with pytest.raises(DataError, match=message) as err:
        load_fixes(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_missing_fixes_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_fixes(tmp_path / "nope.yaml")


# ---------------------------------------------------------------------------------------------- split


def make_people_images(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """One image row per person, genders and age bands in the competition's proportions."""
    rng = np.random.default_rng(seed)
    band = rng.choice(3, n, p=[0.47, 0.45, 0.08])
    age = np.choose(band, [rng.integers(18, 30, n), rng.integers(30, 60, n), rng.integers(60, 76, n)])
    return pd.DataFrame({"person": [f"{i:06d}" for i in range(n)], "gender": (rng.random(n) < 0.61).astype(int),
                         "age": age, "age_band": band})


@pytest.mark.filterwarnings("ignore:The least populated class")  # 12 people cannot fill every stratum
def test_split_keeps_each_person_in_one_fold(images):
    table = labelled(images)
    folds = 3
    val_people = []
    for fold in range(folds):
        train, val = split_images(table, folds, fold, seed=1)
        assert set(train["person"]).isdisjoint(val["person"])
        assert len(train) + len(val) == len(table)
        assert val.groupby("person").size().eq(len(IMAGE_STEMS)).all()  # all of a person's images together
        val_people.append(set(val["person"]))
    assert set().union(*val_people) == set(table["person"])
    assert sum(len(p) for p in val_people) == table["person"].nunique()


def test_split_balances_gender_and_age_band():
    people = make_people_images()
    fold = fold_of_people(people, folds=5, seed=42)
    strata = people.set_index("person").eval("gender * 3 + age_band")
    overall = strata.value_counts(normalize=True)
    for k in range(5):
        in_fold = strata[fold.index[fold == k]]
        assert abs(len(in_fold) - len(people) / 5) <= 1
        share = in_fold.value_counts(normalize=True).reindex(overall.index, fill_value=0)
        assert (share - overall).abs().max() < 0.02, f"fold {k}: {share.round(3).to_dict()}"


def test_split_is_deterministic_per_seed_and_row_order():
    people = make_people_images(200)
    first = fold_of_people(people, folds=5, seed=7)
    pd.testing.assert_series_equal(first, fold_of_people(people, folds=5, seed=7))
    shuffled = people.sample(frac=1.0, random_state=3)
    pd.testing.assert_series_equal(first, fold_of_people(shuffled, folds=5, seed=7))
    assert (first != fold_of_people(people, folds=5, seed=8)).any()


def test_split_is_the_same_for_every_age_bounds():
    # the specialists must hold out the same people so their validation predictions can be merged
    people = make_people_images(200)
    moved = labelled(people.assign(mask=0), (30, 58))
    assert (moved["age_band"] != people["age_band"]).any()
    pd.testing.assert_series_equal(fold_of_people(people, folds=5, seed=3), fold_of_people(moved, folds=5, seed=3))


def test_split_rejects_a_fold_out_of_range(images):
    with pytest.raises(ValueError, match="fold must lie in 0..4"):
        split_images(labelled(images), folds=5, fold=5, seed=0)


# ---------------------------------------------------------------------------------------------- summary


def test_summary_counts_people_and_images(images):
    counts = people_counts(images)
    assert counts.loc["total", "total"] == SAMPLE_PEOPLE
    assert counts.loc[["female", "male"], "total"].sum() == SAMPLE_PEOPLE
    per_class = class_counts(images)
    assert len(per_class) == NUM_CLASSES and per_class.sum() == len(images)
    assert per_class.iloc[0:6].sum() == 5 * SAMPLE_PEOPLE  # five worn-mask images per person
    text = format_summary(images)
    assert text.startswith(f"{SAMPLE_PEOPLE} people, {SAMPLE_PEOPLE * 7} images; races: ")


# ---------------------------------------------------------------------------------------------- bad input
# Each breaker damages a copy of the sample dataset and returns (the path the message must name,
# a fragment of the message).


def _images_dir(root):
    return root / "train" / "images"


def break_missing_image(root):
    folder = profile_folders(root)[0]
    (folder / "mask2.jpg").unlink()
    return folder / "mask2", "missing image mask2"


def break_truncated_image(root):
    return truncate(profile_folders(root)[1] / "mask3.jpg"), "image does not decode"


def break_not_an_image(root):
    path = profile_folders(root)[2] / "mask4.jpg"
    path.write_bytes(b"<html>not a photo</html>")
    return path, "image does not decode"


def break_truncated_eval_image(root):
    path = sorted((root / "eval" / "images").iterdir())[0]
    return truncate(path, keep=0.3), "image does not decode"


def break_extra_file(root):
    path = profile_folders(root)[0] / "notes.txt"
    path.write_text("hello")
    return path, "unexpected file"


def break_extra_image(root):
    path = profile_folders(root)[0] / "mask6.jpg"
    shutil.copy(path.with_name("mask1.jpg"), path)
    return path, "unexpected file"


def break_duplicate_stem(root):
    folder = profile_folders(root)[0]
    shutil.copy(folder / "mask1.jpg", folder / "mask1.png")
    return folder / "mask1.png", "duplicate image"


def break_stray_file_in_images(root):
    path = _images_dir(root) / "readme.txt"
    path.write_text("hello")
    return path, "unexpected file"


def break_folder_name(root):
    folder = profile_folders(root)[0]
    bad = folder.with_name(folder.name.replace("_male_", "_man_").replace("_female_", "_woman_"))
    folder.rename(bad)
    return bad, "does not parse"


def break_row_without_folder(root):
    edit_csv(root / "train" / "train.csv", lambda t: pd.concat(
        [t, pd.DataFrame([{"id": "999999", "gender": "male", "race": "Asian", "age": "20",
                           "path": "999999_male_Asian_20"}])]))
    return root / "train" / "train.csv", "no folder"


def break_row_with_empty_path(root):
    edit_csv(root / "train" / "train.csv", lambda t: pd.concat(
        [t, pd.DataFrame([{"id": "999999", "gender": "male", "race": "Asian", "age": "20", "path": ""}])]))
    return root / "train" / "train.csv", "no folder"


def break_folder_without_row(root):
    edit_csv(root / "train" / "train.csv", lambda t: t.iloc[1:])
    return profile_folders(root)[0], "has no row"


def break_duplicated_csv_id(root):
    edit_csv(root / "train" / "train.csv", lambda t: pd.concat([t, t.iloc[[3]]]))
    return root / "train" / "train.csv", "duplicated id"


def break_duplicated_folder_id(root):
    folder = profile_folders(root)[0]
    meta = parse_folder(folder.name)
    twin = folder.with_name(f"{meta['id']}_{meta['gender']}_{meta['race']}_{meta['age'] + 1}")
    shutil.copytree(folder, twin)
    return twin, "duplicated id"


def break_csv_disagrees_with_folder(root):
    edit_csv(root / "train" / "train.csv", lambda t: t.assign(age=t["age"].where(t.index != 0, "99")))
    return root / "train" / "train.csv", "disagree with folder"


def break_missing_train_csv(root):
    path = root / "train" / "train.csv"
    path.unlink()
    return path, "file is missing"


def break_train_csv_columns(root):
    edit_csv(root / "train" / "train.csv", lambda t: t.drop(columns=["path"]))
    return root / "train" / "train.csv", "missing column(s) path"


def break_eval_id_without_file(root):
    path = sorted((root / "eval" / "images").iterdir())[0]
    path.unlink()
    return root / "eval" / "info.csv", f"ImageID {path.name} has no file"


def break_duplicated_eval_id(root):
    edit_csv(root / "eval" / "info.csv", lambda t: pd.concat([t, t.iloc[[0]]]))
    return root / "eval" / "info.csv", "duplicated ImageID"


def break_empty_train(root):
    for folder in profile_folders(root):
        shutil.rmtree(folder)
    edit_csv(root / "train" / "train.csv", lambda t: t.iloc[:0])
    return _images_dir(root), "empty dataset"


def break_empty_eval(root):
    edit_csv(root / "eval" / "info.csv", lambda t: t.iloc[:0])
    return root / "eval" / "info.csv", "empty dataset"


def break_missing_images_dir(root):
    shutil.rmtree(_images_dir(root))
    return _images_dir(root), "folder is missing"


BREAKERS = [value for name, value in sorted(globals().items()) if name.startswith("break_")]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__.removeprefix("break_"))
def test_each_bad_input_is_one_line_naming_the_path(dataset_copy, breaker):
    path, fragment = breaker(dataset_copy)
    problems = check_dataset(dataset_copy)
    assert any(p.path == path and fragment in p.message for p in problems), "\n".join(map(str, problems))
    for problem in problems:
        assert "\n" not in str(problem) and str(problem).startswith(str(problem.path))


def test_check_reports_every_problem_in_one_run(dataset_copy):
    expected = [breaker(dataset_copy) for breaker in (break_missing_image, break_truncated_image,
                                                      break_extra_file, break_eval_id_without_file,
                                                      break_duplicated_csv_id)]
    problems = check_dataset(dataset_copy)
    for path, fragment in expected:
        assert any(p.path == path and fragment in p.message for p in problems), (path, fragment)
    assert len(problems) >= len(expected)


def test_decoding_is_what_finds_truncated_images(dataset_copy):
    path, _ = break_truncated_image(dataset_copy)
    assert check_dataset(dataset_copy, decode=False) == []
    assert [p.path for p in check_dataset(dataset_copy)] == [path]


def test_missing_dataset_folder(tmp_path):
    assert [str(p) for p in check_dataset(tmp_path / "nope")] == [f"{tmp_path / 'nope'}: dataset folder does not exist"]


def test_readers_raise_the_first_problem_and_count_the_rest(dataset_copy):
    break_missing_image(dataset_copy)
    break_extra_file(dataset_copy)
    with pytest.raises(DataError, match=r"notes.txt: unexpected file.*\(and 1 more problem\(s\)") as err:
        load_train(dataset_copy)
    assert "\n" not in str(err.value)
    break_eval_id_without_file(dataset_copy)
    with pytest.raises(DataError, match="has no file"):
        read_eval_images(dataset_copy)


def test_scan_eval_keeps_info_csv_order(sample_dataset):
    table, problems = scan_eval(sample_dataset)
    info = pd.read_csv(sample_dataset / "eval" / "info.csv", dtype=str)
    assert problems == [] and table["ImageID"].tolist() == info["ImageID"].tolist()


# -------------------------------------------------------------------------- odd names, oversized images

@pytest.mark.parametrize("race", ["Européen", "Middle-Eastern", "아시아", "Others2"])
def test_the_race_is_any_word_without_an_underscore(race):
    assert parse_folder(f"000001_female_{race}_31") == {"id": "000001", "gender": "female", "race": race, "age": 31}


def test_a_dataset_with_a_non_ascii_race_checks_clean(dataset_copy):
    folder = profile_folders(dataset_copy)[0]
    renamed = folder.with_name(folder.name.replace(folder.name.split("_")[2], "Européen"))
    folder.rename(renamed)
    edit_csv(dataset_copy / "train" / "train.csv", lambda t: t.replace({"path": {folder.name: renamed.name},
                                                                         "race": {folder.name.split("_")[2]: "Européen"}}))
    assert check_dataset(dataset_copy, decode=False) == []
    assert "Européen" in set(load_train(dataset_copy)["race"])


def test_a_file_given_as_the_dataset_is_called_a_file(tmp_path):
    path = tmp_path / "faces.zip"
    path.write_bytes(b"PK")
    assert [str(p) for p in check_dataset(path)] == [f"{path}: is a file, not a dataset folder (train/ and eval/)"]


def test_open_rgb_refuses_more_pixels_than_pil_allows_before_decoding(tmp_path, monkeypatch):
    from PIL import Image

    path = tmp_path / "poster.png"
    Image.new("RGB", (64, 48)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses over twice this: 3072 pixels is
    with pytest.raises(DataError, match=rf"^{path}: not decoded, a possible decompression bomb \(.*3072 pixels"):
        open_rgb(path)
