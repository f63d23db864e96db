"""The shipped bundle (maskcls/weights/) as a user gets it after install: it loads with every sha256 right, fits
30 MB, and `FaceChecker()` on the six CC0 sample photos finds at least 7 of their 8 labelled faces (IoU >= 0.3)
and names at least 6 of their mask states. Skipped only where no bundle is shipped."""
from __future__ import annotations

import pandas as pd
import pytest

from maskcls.bundle import bundle_dir, load_bundle

pytestmark = pytest.mark.skipif(not (bundle_dir() / "manifest.json").is_file(), reason="no bundle shipped")


def test_the_shipped_bundle_loads_checked_and_fits_30_mb(monkeypatch):
    monkeypatch.delenv("MASKCLS_BUNDLE_DIR", raising=False)
    bundle = load_bundle()
    assert set(bundle.tasks) == {"mask", "age", "gender"}
    assert sum((bundle.root / name).stat().st_size for name in bundle.files) <= 30e6


def test_the_bundle_finds_and_reads_the_sample_photos_faces(monkeypatch):
    from bench.photos import SAMPLES, match
    from maskcls import FaceChecker

    monkeypatch.delenv("MASKCLS_BUNDLE_DIR", raising=False)
    checker = FaceChecker()
    found = right = 0
    for photo, truth in pd.read_csv(SAMPLES / "labels.csv").groupby("photo"):
        faces = checker.predict(SAMPLES / photo)
        matched = match(truth[["x1", "y1", "x2", "y2"]].to_numpy().tolist(),
                        [[f["x1"], f["y1"], f["x2"], f["y2"]] for f in faces])
        found += sum(j is not None for j in matched)
        right += sum(j is not None and faces[j]["mask"] == mask for j, mask in zip(matched, truth["mask"]))
    assert found >= 7 and right >= 6, (found, right)
