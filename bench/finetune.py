"""What starting from the bundle saves: fine-tuning on people the bundle never saw, against the ImageNet start.

    python bench/finetune.py                      # held-out fifth of the train people, seed 42
    python bench/finetune.py --held-out 0.3 --seed 1 --project runs/finetune-b

1. Split the dev set's train people by a seeded draw into A (the bundle's) and B (held out), as datasets of links
   into ../shared/data/faces (no copies) that read the dev set's crop cache.
2. A measurement bundle: configs/' recipe of each task (one seed), trained on A with every source that suits it
   (build_bundle's: the extra faces for age and gender), packed as the real bundle is (int8 per output channel).
3. Fine-tune each task on B alone (no extra faces: the bundle has seen them), configs/' recipe, from ImageNet
   (the configs' start) and from the measurement bundle (``pretrained=maskcls``): one epoch, and the recipe's epochs.
4. Score every start on the dev eval (people in neither A nor B) and on ood_ffhq: per task macro F1 with 95 %
   intervals over people, the paired difference bundle start minus ImageNet start, and the training seconds.
   The measurement bundle itself, not fine-tuned, is scored beside them.

Every run is reused when finished and resumed when interrupted, so the same command finishes a stopped benchmark.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `python bench/finetune.py`

from bench.build_bundle import PARTS, SETS, extra_crop_options, scored, submission, train_sources  # noqa: E402
from bench.generalise import f1_cell  # noqa: E402
from bench.common import crop_all, epochs_seconds, finished_run  # noqa: E402
from maskcls.bundle import BUNDLE_ENV, write_bundle  # noqa: E402
from maskcls.config import load_config  # noqa: E402
from maskcls.data.crop import resolve_cache_dir  # noqa: E402
from maskcls.data.labels import decode  # noqa: E402
from maskcls.tasks import SPECIALISTS  # noqa: E402

VERSION = "2000.01.01"  # the measurement bundle's: never a release


def split_people(data: Path, held_out: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The train.csv rows of ``data`` as (A, B): a seeded draw of ``held_out`` of the people into B."""
    people = pd.read_csv(data / "train" / "train.csv", dtype=str)
    chosen = np.random.default_rng(seed).permutation(len(people))[:round(held_out * len(people))]
    inside = np.zeros(len(people), bool)
    inside[chosen] = True
    return people[~inside], people[inside]


def linked_dataset(data: Path, people: pd.DataFrame, out: Path) -> Path:
    """A dataset at ``out`` in the competition layout: links to ``people``'s folders of ``data`` and to its eval."""
    images = out / "train" / "images"
    images.mkdir(parents=True, exist_ok=True)
    for folder in people["path"]:
        link = images / folder
        if not link.exists():
            link.symlink_to((data / "train" / "images" / folder).resolve(), target_is_directory=True)
    if not (out / "eval").exists():
        (out / "eval").symlink_to((data / "eval").resolve(), target_is_directory=True)
    people.to_csv(out / "train" / "train.csv", index=False)
    return out


def trained(task: str, run: Path, overrides: list[str], epochs: int) -> Path:
    """``run`` (``<project>/<task>/<name>``) trained with configs/' recipe plus ``overrides``, one seed."""
    finished_run(task, run, epochs, [*overrides, "ensemble=1", f"project={run.parent.parent}"])
    return run


def measurement_bundle(project: Path, data_a: Path, crops: Path) -> Path:
    """Each task trained on A (with the extra faces where the recipe takes them), packed as the bundle is."""
    runs = {}
    for task in SPECIALISTS:
        config = load_config(task)
        sources = [f"data_dir={data_a}"] + train_sources(task)[1:]
        epochs = config.extra_epochs if len(sources) > 1 and config.extra_epochs else config.epochs
        runs[task] = trained(task, project / "a" / task / "seen", [*sources, f"crop_cache={crops}"], epochs)
    out = project / "bundle"
    write_bundle(runs, out, VERSION, storage="int8")
    return out


def fine_tunes(project: Path, data_b: Path, crops: Path, bundle: Path) -> dict[str, dict[str, list[Path]]]:
    """Per start and epoch budget (``imagenet-1``, ``bundle-4``, ...): each task's run on B alone (one member)."""
    os.environ[BUNDLE_ENV] = str(bundle)  # pretrained=maskcls reads the measurement bundle
    starts = {}
    for start, pretrained in (("imagenet", []), ("bundle", ["pretrained=maskcls"])):
        for budget in ("1", "recipe"):
            name = f"{start}-{budget}"
            starts[name] = {}
            for task in SPECIALISTS:
                epochs = 1 if budget == "1" else load_config(task).epochs
                overrides = [f"data_dir={data_b}", f"crop_cache={crops}", "extra_data=[]", f"epochs={epochs}",
                             *pretrained]
                starts[name][task] = [trained(task, project / "b" / task / name, overrides, epochs)]
    return starts


def scores(project: Path, starts: dict[str, dict[str, list[Path]] | None]) -> dict[str, dict]:
    """Per set: the submissions of every start (None: the measurement bundle alone), scored per task."""
    out = {}
    for set_name, data in SETS.items():
        answers = {name: submission(project / "submissions" / f"{set_name}-{name}.csv", data, runs, tta=False)
                   for name, runs in starts.items()}
        table, preds = scored(data / "eval" / "labels.csv", answers)
        truth, people = decode(table["ans"].to_numpy()), table["person"].to_numpy()
        out[set_name] = {task: f1_cell(truth[part], {n: p[part] for n, p in preds.items()}, people)
                         for task, part in PARTS.items()}
    return out


def rows(results: dict[str, dict], starts: dict[str, dict[str, list[Path]] | None]) -> list[str]:
    """Markdown rows: per set, task and epoch budget, the two starts' F1, their paired difference and seconds."""
    fmt = lambda c: f"{c[0]:.3f} ({c[1]:.3f}-{c[2]:.3f})"  # noqa: E731
    lines = ["| set | task | epochs on B | ImageNet start | bundle start | bundle - ImageNet (paired, 95 %) "
             "| seconds (ImageNet / bundle) | bundle alone |", "|---|---|---|---|---|---|---|---|"]
    for set_name, per_task in results.items():
        for task, cells in per_task.items():
            for budget in ("1", "recipe"):
                a, b = cells[f"imagenet-{budget}"], cells[f"bundle-{budget}"]
                diff = b[3] - a[3]
                seconds = [epochs_seconds(starts[f"{s}-{budget}"][task][0]) for s in ("imagenet", "bundle")]
                epochs = 1 if budget == "1" else load_config(task).epochs
                lines.append(f"| {set_name} | {task} | {epochs} | {fmt(a)} | {fmt(b)} | {b[0] - a[0]:+.3f} "
                             f"({np.percentile(diff, 2.5):+.3f} .. {np.percentile(diff, 97.5):+.3f}) "
                             f"| {seconds[0]:.0f} / {seconds[1]:.0f} | {fmt(cells['alone'])} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--held-out", type=float, default=0.2, help="share of the train people in B")
    parser.add_argument("--seed", type=int, default=42, help="the draw of B's people")
    parser.add_argument("--project", type=Path, default=Path("runs/finetune"))
    args = parser.parse_args()
    if not all(p.is_dir() for p in SETS.values()):
        print(f"skip: {', '.join(str(p) for p in SETS.values())} needed")
        return
    project = args.project.resolve()
    print(f"command: python bench/finetune.py --held-out {args.held_out} --seed {args.seed} --project {args.project}")
    crop_all(SETS["dev"], *extra_crop_options())
    crop_all(SETS["ood"])
    crops = resolve_cache_dir(SETS["dev"])
    a, b = split_people(SETS["dev"], args.held_out, args.seed)
    print(f"people: A {len(a)} (the measurement bundle's), B {len(b)} (fine-tuned on)")
    data_a = linked_dataset(SETS["dev"], a, project / "data-a")
    data_b = linked_dataset(SETS["dev"], b, project / "data-b")
    bundle = measurement_bundle(project, data_a, crops)
    starts: dict[str, dict[str, list[Path]] | None] = {"alone": None, **fine_tunes(project, data_b, crops, bundle)}
    results = scores(project, starts)
    print("\n".join(rows(results, starts)))


if __name__ == "__main__":
    main()
