"""The face crops of two datasets side by side: are they alike?

    python bench/crop_compare.py                                   # ../shared/data/faces vs ../shared/data/ood_ffhq
    python bench/crop_compare.py --margin 0.1 --square             # another crop geometry (no detection again)
    python bench/crop_compare.py --a DATA_A --b DATA_B --out crops.png

Reads the MTCNN detections cached by `maskcls crop` for each set (run it first), cuts each image's crop with
the geometry given (`crop_margin`, `crop_square`, `crop_fallback`: what a run applies when it reads an image),
and writes one contact sheet with a row of set A over a row of set B, then prints per set: the detection
rate and the passes that found the faces, the face box's side as a share of the image's shorter side, its
aspect (height / width), and the share of crops clipped at the image edge (less context than the margin asks).
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np

from maskcls.data.crop import dataset_images, entry_face, folder_settings, read_manifest, resolve_cache_dir
from maskcls.data.faces import CropSettings, crop_box, square_box
from maskcls.data.images import open_rgb
from maskcls.plots import save_contact_sheet

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def detections(data: Path, settings: CropSettings) -> list[dict]:
    """The cached manifest rows of ``data``'s images under the detection settings of ``settings`` (as ``maskcls
    crop`` applies them to that folder)."""
    entries = read_manifest(resolve_cache_dir(data))
    digest = folder_settings(settings, data).digest()
    keys = [Path(path).relative_to(data).as_posix() for _, path in dataset_images(data)]
    return [entries[k] for k in keys if k in entries and entries[k]["settings_hash"] == digest]


def set_figures(data: Path, rows: list[dict], settings: CropSettings, sample: int = 400) -> dict:
    """Detection rate, passes, face side / image side, aspect, share of clipped crops (on ``sample`` images)."""
    faces = [(row, entry_face(row)) for row in rows]
    found = [(row, face) for row, face in faces if face is not None]
    rng = random.Random(0)
    shares, aspects, clipped = [], [], 0
    for row, face in rng.sample(found, min(sample, len(found))):
        size = open_rgb(data / row["path"]).size
        x1, y1, x2, y2 = face.box
        shares.append(min(x2 - x1, y2 - y1) / min(size))
        aspects.append((y2 - y1) / (x2 - x1))
        clipped += runs_past_edge(square_box(face.box) if settings.square else face.box, size, settings.margin)
    passes = {}
    for row, _ in found:
        passes[int(row["pass"])] = passes.get(int(row["pass"]), 0) + 1
    return {"images": len(rows), "detected": len(found) / max(1, len(rows)), "passes": dict(sorted(passes.items())),
            "face_share": np.percentile(shares, [10, 50, 90]), "aspect": np.percentile(aspects, [10, 50, 90]),
            "clipped": clipped / max(1, len(shares))}


def runs_past_edge(box, size: tuple[int, int], margin: float) -> bool:
    """Whether ``box`` grown by ``margin`` runs past the image (so the crop is clipped: less context)."""
    x1, y1, x2, y2 = box
    dx, dy = margin * (x2 - x1), margin * (y2 - y1)
    return x1 - dx < 0 or y1 - dy < 0 or x2 + dx > size[0] or y2 + dy > size[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", type=Path, default=SHARED / "faces")
    parser.add_argument("--b", type=Path, default=SHARED / "ood_ffhq")
    parser.add_argument("--margin", type=float, default=CropSettings.margin)
    parser.add_argument("--square", action="store_true")
    parser.add_argument("--fallback", type=float, default=CropSettings.fallback)
    parser.add_argument("--per-row", type=int, default=10)
    parser.add_argument("--rows", type=int, default=4, help="row pairs (A over B)")
    parser.add_argument("--out", type=Path, default=Path("runs/crop_compare.png"))
    args = parser.parse_args()
    settings = CropSettings(margin=args.margin, fallback=args.fallback, square=args.square)
    sets = {}
    for name, data in (("A", args.a), ("B", args.b)):
        if not data.is_dir():
            print(f"skip: no dataset at {data}")
            return
        rows = detections(data, settings)
        if not rows:
            print(f"skip: no cached detections for {data}: run `maskcls crop {data}` first")
            return
        sets[name] = (data, rows)

    print(f"crop geometry: margin {args.margin}, square {args.square}, fallback {args.fallback}")
    print("| set | images | detected | passes | face side / image side (p10, p50, p90) | aspect h/w | clipped |")
    print("|---|---|---|---|---|---|---|")
    for name, (data, rows) in sets.items():
        f = set_figures(data, rows, settings)
        print(f"| {name}: {data.name} | {f['images']} | {f['detected']:.1%} | {f['passes']} | "
              f"{', '.join(f'{v:.2f}' for v in f['face_share'])} | {', '.join(f'{v:.2f}' for v in f['aspect'])} | "
              f"{f['clipped']:.1%} |")

    rng = random.Random(1)
    picks = {name: rng.sample(rows, min(len(rows), args.per_row * args.rows)) for name, (_, rows) in sets.items()}
    images, captions, flagged = [], [], []
    for r in range(args.rows):
        for name, (data, _) in sets.items():
            for row in picks[name][r * args.per_row:(r + 1) * args.per_row]:
                image = open_rgb(data / row["path"])
                face = entry_face(row)
                images.append(image.crop(crop_box(face, image.size, settings)))
                captions.append(f"{name} {Path(row['path']).stem[:8]} p{row['pass']}")
                flagged.append(face is None)
    title = (f"A ({args.a.name}) over B ({args.b.name}); margin {args.margin}, square {args.square}; "
             f"red: no face (centre crop)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(f"wrote {save_contact_sheet(images, captions, args.out, flagged=flagged, title=title, columns=args.per_row)}")


if __name__ == "__main__":
    main()
