"""`maskcls detect` on a group photo composed from eval photos, scored against their true labels.

    python bench/detect_group.py --bundled                                # the bundled specialists, 8 people, 4 x 2
    python bench/detect_group.py --mask RUN --age RUN --gender RUN        # chosen runs
    python bench/detect_group.py ... --people 12 --cols 6 --seed 1

Picks ``--people`` different eval people of ``../shared/data/faces`` (mask states in turn: wear,
incorrect, not wear), tiles one photo of each into one picture, runs `maskcls detect` on it with
``--annotate``, matches each detected face to the tile its box centre falls in and prints, per face,
the truth beside the answer, then how many faces were found and how many mask / gender / age answers
are right. labels.csv is read for scoring only. Skips cleanly when the dataset is absent.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd
from PIL import Image

from maskcls.data.labels import AGE_NAMES, GENDER_NAMES, MASK_NAMES

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"


def pick_people(labels: pd.DataFrame, count: int, seed: int) -> pd.DataFrame:
    """One photo each of ``count`` different people, the mask states taken in turn."""
    people = labels.drop_duplicates("person").sample(n=count, random_state=seed)["person"].tolist()
    rows = []
    for index, person in enumerate(people):
        photos = labels[(labels["person"] == person) & (labels["mask"] == index % 3)]
        rows.append(photos.sample(n=1, random_state=seed).iloc[0])
    return pd.DataFrame(rows).reset_index(drop=True)


def compose(paths: list[Path], cols: int) -> tuple[Image.Image, tuple[int, int]]:
    """The photos tiled ``cols`` to a row (all the size of the first); the tile size."""
    tiles = [Image.open(p).convert("RGB") for p in paths]
    width, height = tiles[0].size
    rows = -(-len(tiles) // cols)
    group = Image.new("RGB", (cols * width, rows * height), (128, 128, 128))
    for index, tile in enumerate(tiles):
        group.paste(tile.resize((width, height)), ((index % cols) * width, (index // cols) * height))
    return group, (width, height)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    for task in ("mask", "age", "gender"):
        parser.add_argument(f"--{task}", type=Path, help=f"{task} run folder (default: maskcls detect's choice)")
    parser.add_argument("--bundled", action="store_true", help="maskcls detect --bundled: the bundled specialists")
    parser.add_argument("--people", type=int, default=8)
    parser.add_argument("--cols", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/detect_group"))
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--detector", default="retinaface", help="maskcls detect --detector")
    parser.add_argument("--min-prob", type=float, help="maskcls detect --min-prob (default: the detector's)")
    args = parser.parse_args()
    labels_path = args.data / "eval" / "labels.csv"
    if not labels_path.is_file():
        print(f"skip: no {labels_path}")
        return
    truth = pick_people(pd.read_csv(labels_path, dtype={"person": str}), args.people, args.seed)
    group, (width, height) = compose([args.data / "eval" / "images" / i for i in truth["ImageID"]], args.cols)
    args.out.mkdir(parents=True, exist_ok=True)
    photo = args.out / "group.jpg"
    group.save(photo, quality=92)
    faces_csv = args.out / "faces.csv"
    runs = [o for task in ("mask", "age", "gender") if getattr(args, task) for o in (f"--{task}", str(getattr(args, task)))]
    command = [sys.executable, "-m", "maskcls", "detect", str(photo), *runs, *(["--bundled"] if args.bundled else []),
               "--out", str(faces_csv), "--annotate", str(args.out / "annotated"),
               "--detector", args.detector, *(["--min-prob", str(args.min_prob)] if args.min_prob is not None else []),
               *(["--tta"] if args.tta else [])]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"`{' '.join(command)}` failed:\n{done.stderr[-3000:]}")
    faces = pd.read_csv(faces_csv)
    faces = faces[faces["status"] == "face"]

    print(f"group photo {photo} ({group.width}x{group.height}, {len(truth)} people, {args.cols} to a row); "
          f"annotated: {args.out / 'annotated'}")
    print("| tile | truth (mask/gender/age) | answer | det prob | right |")
    print("|---|---|---|---|---|")
    right = {"mask": 0, "gender": 0, "age": 0}
    seen = set()
    for _, face in faces.iterrows():
        tile = int((face["y1"] + face["y2"]) / 2 // height) * args.cols + int((face["x1"] + face["x2"]) / 2 // width)
        if tile >= len(truth) or tile in seen:
            print(f"| - | (no person here, or a second box on tile {tile}) | {face['class']} | {face['det_prob']} | |")
            continue
        seen.add(tile)
        t = truth.iloc[tile]
        want = {"mask": MASK_NAMES[t["mask"]], "gender": GENDER_NAMES[t["gender"]], "age": AGE_NAMES[t["age_band"]]}
        hits = [task for task in want if face[task] == want[task]]
        for task in hits:
            right[task] += 1
        print(f"| {tile} | {'/'.join(want.values())} (age {t['age']}) | {face['class']} | {face['det_prob']:.3f} | "
              f"{', '.join(hits) or '-'} |")
    print(f"\nfaces found: {len(seen)} of {len(truth)} people ({len(faces) - len(seen)} other boxes); right answers "
          f"among them: mask {right['mask']}, gender {right['gender']}, age band {right['age']}")


if __name__ == "__main__":
    main()
