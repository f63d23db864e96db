"""Face-crop speed: MTCNN detection images/s on CPU (and GPU when present), and the cached re-run.

    python bench/crop_speed.py [--data ../shared/data/faces] [--images 224] [--batch 32]

Detection is timed on the first ``--images`` train images (all passes of the default settings,
and the first pass alone). The cached re-run is timed on the whole dataset when ``maskcls crop``
has filled its cache; otherwise a copy of the first 20 train people is cropped twice in a temporary
folder. Skips cleanly when the dataset is absent.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from maskcls.data.crop import dataset_images, read_manifest, resolve_cache_dir, run_crop
from maskcls.data.faces import CropSettings, create_detectors, pick_faces
from maskcls.data.images import open_rgb

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"


def detection_speed(images, settings: CropSettings, device: str, batch: int, passes: int) -> tuple[float, int]:
    """(images/s, faces found) over ``images`` after one untimed warm-up batch."""
    detectors = create_detectors(settings, device)[:passes]
    pick_faces(images[:batch], settings, detectors)
    start = time.perf_counter()
    found = sum(face is not None for i in range(0, len(images), batch)
                for face, _ in pick_faces(images[i:i + batch], settings, detectors))
    return len(images) / (time.perf_counter() - start), found


def cache_complete(data: Path, settings: CropSettings) -> bool:
    entries = read_manifest(resolve_cache_dir(data))
    digest = settings.digest()
    return len(entries) >= len(dataset_images(data)) and all(e["settings_hash"] == digest for e in entries.values())


def subset_copy(data: Path, root: Path, people: int = 20) -> Path:
    """The first ``people`` train folders and their train.csv rows, copied under ``root``."""
    table = pd.read_csv(data / "train" / "train.csv", dtype=str).head(people)
    for folder in table["path"]:
        shutil.copytree(data / "train" / "images" / folder, root / "faces" / "train" / "images" / folder)
    table.to_csv(root / "faces" / "train" / "train.csv", index=False)
    return root / "faces"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    if not (args.data / "train").is_dir():
        print(f"skip: no dataset at {args.data}")
        return
    os.environ.setdefault("MASKCLS_NO_PROGRESS", "1")
    settings = CropSettings()
    paths = [p for _, p in dataset_images(args.data)][:args.images]
    images = [open_rgb(p) for p in paths]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"{len(images)} images of {images[0].size[0]}x{images[0].size[1]}, batch {args.batch}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for passes in (1, len(settings.passes)):
            rate, found = detection_speed(images, settings, device, args.batch, passes)
            print(f"detect {device}, {passes} pass(es): {rate:.1f} images/s, face found in {found}/{len(images)}")

    if cache_complete(args.data, settings):
        start = time.perf_counter()
        summary = run_crop(args.data, settings, sheet=False, show_progress=False)
        print(f"cached re-run of {sum(summary.images.values())} images: {time.perf_counter() - start:.1f} s "
              f"(cropped now: {summary.cropped_now})")
        return
    print(f"no complete cache for {args.data} (run `maskcls crop {args.data}` first); timing a 20-person copy")
    with tempfile.TemporaryDirectory() as tmp:
        subset = subset_copy(args.data, Path(tmp))
        for label in ("first run", "cached re-run"):
            start = time.perf_counter()
            summary = run_crop(subset, settings, sheet=False, show_progress=False)
            print(f"{label} of {sum(summary.images.values())} images: {time.perf_counter() - start:.1f} s "
                  f"(cropped now: {summary.cropped_now})")


if __name__ == "__main__":
    main()
