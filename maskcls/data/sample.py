"""A tiny synthetic dataset in the exact competition layout, for the README's demo and for tests.

Each person is a drawn face whose look carries the labels, so a model can learn them: the mask is a
blue (worn), lowered blue (incorrect) or absent shape; hair is long for women; grey hair for the old,
wrinkle lines from 30. Deterministic for a given seed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from .labels import IMAGE_STEMS, MASK_BY_STEM

RACES = ("White", "Black", "Asian", "Indian", "Others")
SKIN = {"White": (235, 200, 180), "Black": (110, 75, 55), "Asian": (230, 195, 150), "Indian": (170, 120, 90),
        "Others": (200, 160, 120)}


def draw_face(gender: int, age: int, race: str, mask: int, rng: np.random.Generator, size=(96, 128)) -> Image.Image:
    w, h = size
    background = tuple(int(v) for v in rng.integers(60, 200, 3))
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    cx, cy = w / 2 + rng.uniform(-4, 4), h * 0.45 + rng.uniform(-4, 4)
    fw, fh = w * 0.28, h * 0.26
    hair = (200, 200, 200) if age >= 60 else tuple(int(v) for v in rng.integers(20, 90, 3))
    if gender == 1:  # long hair behind the face
        draw.rectangle([cx - fw * 1.25, cy - fh * 1.1, cx + fw * 1.25, cy + fh * 1.4], fill=hair)
    draw.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=SKIN[race])
    draw.chord([cx - fw, cy - fh * 1.15, cx + fw, cy - fh * 0.2], 180, 360, fill=hair)
    for ex in (cx - fw * 0.4, cx + fw * 0.4):
        draw.ellipse([ex - 3, cy - fh * 0.2 - 3, ex + 3, cy - fh * 0.2 + 3], fill=(30, 30, 30))
    if age >= 30:  # wrinkles on the forehead
        for k in range(1 + (age >= 60)):
            y = cy - fh * (0.55 - 0.12 * k)
            draw.line([cx - fw * 0.5, y, cx + fw * 0.5, y], fill=(90, 60, 50), width=1)
    draw.line([cx - fw * 0.3, cy + fh * 0.5, cx + fw * 0.3, cy + fh * 0.5], fill=(150, 40, 40), width=2)
    if mask != 2:
        top = cy + (0.0 if mask == 0 else 0.45) * fh  # incorrect: pulled under the nose, mouth free
        colour = tuple(int(v) for v in rng.integers(0, 60, 3)) if rng.random() < 0.3 else (90, 150, 220)
        draw.rectangle([cx - fw * 0.9, top, cx + fw * 0.9, cy + fh * 0.95 + (mask == 1) * fh * 0.3], fill=colour)
    noise = rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def make_sample_dataset(root: str | Path, people: int = 60, eval_people: int = 20, seed: int = 0,
                        size=(96, 128)) -> Path:
    """Write ``train/`` and ``eval/`` (with ``eval/labels.csv`` for scoring) under ``root``; return ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows, eval_rows = [], []
    ages = np.concatenate([rng.integers(18, 30, people), rng.integers(30, 60, people), rng.integers(60, 80, people)])
    for index in range(people + eval_people):
        gender = int(rng.random() < 0.6)
        age = int(ages[rng.integers(len(ages))] if index % 6 else rng.integers(60, 80))  # keep the old band present
        race = RACES[rng.integers(len(RACES))]
        pid = f"{index + 1:06d}"
        folder_name = f"{pid}_{'female' if gender else 'male'}_{race}_{age}"
        is_train = index < people
        folder = root / "train" / "images" / folder_name
        if is_train:
            folder.mkdir(parents=True, exist_ok=True)
            rows.append({"id": pid, "gender": "female" if gender else "male", "race": race, "age": age,
                         "path": folder_name})
        for stem in IMAGE_STEMS:
            image = draw_face(gender, age, race, MASK_BY_STEM[stem], rng, size)
            if is_train:
                ext = (".jpg", ".jpeg", ".png")[index % 3] if stem == "normal" else ".jpg"
                image.save(folder / f"{stem}{ext}")
            else:
                name = f"{pid}_{stem}.jpg"
                (root / "eval" / "images").mkdir(parents=True, exist_ok=True)
                image.save(root / "eval" / "images" / name)
                band = 0 if age < 30 else 1 if age < 60 else 2
                eval_rows.append({"ImageID": name, "ans": MASK_BY_STEM[stem] * 6 + gender * 3 + band,
                                  "mask": MASK_BY_STEM[stem], "gender": gender, "age": age, "age_band": band,
                                  "person": pid})
    pd.DataFrame(rows).to_csv(root / "train" / "train.csv", index=False)
    labels = pd.DataFrame(eval_rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    labels.to_csv(root / "eval" / "labels.csv", index=False)
    labels.assign(ans=0)[["ImageID", "ans"]].to_csv(root / "eval" / "info.csv", index=False)
    return root


def make_sample_extra(root: str | Path, faces: int = 30, seed: int = 1, size=(96, 128),
                      columns: tuple[str, ...] = ("age", "gender")) -> Path:
    """An extra_data folder (``images/`` + ``labels.csv``) of drawn faces without masks (unless ``mask`` is
    among ``columns``), ages 18-79; ``labels.csv`` holds ``file`` and ``columns``. Returns ``root``."""
    from .labels import GENDER_NAMES, MASK_NAMES

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(faces):
        gender, age, mask = int(rng.random() < 0.5), int(rng.integers(18, 80)), int(rng.integers(0, 3))
        race = RACES[rng.integers(len(RACES))]
        name = f"extra_{index:05d}.jpg"
        draw_face(gender, age, race, mask if "mask" in columns else 2, rng, size).save(root / "images" / name)
        labels = {"age": age, "gender": GENDER_NAMES[gender], "mask": MASK_NAMES[mask]}
        rows.append({"file": name, **{c: labels[c] for c in columns}})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root
