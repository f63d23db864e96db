"""The shipped bundle (maskcls/weights/) as a user gets it after install: it loads with every sha256 right, fits
30 MB, and `FaceChecker()` on the six CC0 sample photos finds at least 7 of their 8 labelled faces (IoU >= 0.3)
and names at least 6 of their mask states. Skipped only where no bundle is shipped."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from maskcls.bundle import bundle_dir, load_bundle

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples" / "photos"

pytestmark = pytest.mark.skipif(not (bundle_dir() / "manifest.json").is_file(), reason="no bundle shipped")


def iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_the_shipped_bundle_loads_checked_and_fits_30_mb(monkeypatch):
    monkeypatch.delenv("MASKCLS_BUNDLE_DIR", raising=False)
    bundle = load_bundle()
    assert set(bundle.tasks) == {"mask", "age", "gender"}
    assert sum((bundle.root / name).stat().st_size for name in bundle.files) <= 30e6


def test_the_bundle_finds_and_reads_the_sample_photos_faces(monkeypatch):
    from maskcls import FaceChecker

    monkeypatch.delenv("MASKCLS_BUNDLE_DIR", raising=False)
    labels = pd.read_csv(SAMPLES / "labels.csv")
    checker = FaceChecker()
    found = right = 0
    for photo, truth in labels.groupby("photo"):
        faces = checker.predict(SAMPLES / photo)
        for box in truth.itertuples():
            scores = [(iou((box.x1, box.y1, box.x2, box.y2), (f["x1"], f["y1"], f["x2"], f["y2"])), f) for f in faces]
            best, face = max(scores, key=lambda s: s[0], default=(0.0, None))
            if best >= 0.3:
                found += 1
                right += face["mask"] == box.mask
    assert found >= 7 and right >= 6, (found, right)
