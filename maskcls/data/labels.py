"""The 18-class label: ``mask * 6 + gender * 3 + age_band``, and the pieces it is made of."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import ConfigError

MASK_NAMES = ("wear", "incorrect", "not_wear")
GENDER_NAMES = ("male", "female")
AGE_NAMES = ("<30", "30-old", "old")
NUM_CLASSES = 18

# image stem -> mask code; mask1..mask5 are all "worn properly"
MASK_BY_STEM = {**{f"mask{i}": 0 for i in range(1, 6)}, "incorrect_mask": 1, "normal": 2}
IMAGE_STEMS = tuple(MASK_BY_STEM)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
GENDER_BY_NAME = {"male": 0, "female": 1}

DEFAULT_AGE_BOUNDS = (30, 60)  # band 0: age < 30, band 1: 30 <= age < 60, band 2: age >= 60


def age_band(age, bounds: Sequence[int] = DEFAULT_AGE_BOUNDS):
    """Age band 0/1/2 for an age (or an array of ages); ``bounds`` are the lower edges of bands 1, 2."""
    young_max, old_min = check_age_bounds(bounds)
    return np.digitize(age, [young_max, old_min]) if np.ndim(age) else int(np.digitize([age], [young_max, old_min])[0])


def soft_age_bands(ages, bounds: Sequence[int] = DEFAULT_AGE_BOUNDS, sigma: float = 3.0) -> np.ndarray:
    """``(n, 3)`` chances that each age, blurred by Gaussian noise of ``sigma`` years, lies in each band.

    Soft ordinal labels (SORD, Diaz & Marathe 2019) from the real age: a 29-year-old is mostly "<30" and
    partly "30-old", a 45-year-old all "30-old". Ages are whole years, so the edge between bands sits half
    a year below each bound (``age < 30`` is ``age <= 29``)."""
    young_max, old_min = check_age_bounds(bounds)
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    from scipy.special import ndtr  # the standard normal CDF

    ages = np.asarray(ages, dtype=np.float64).reshape(-1)
    below = ndtr((np.array([young_max, old_min]) - 0.5 - ages[:, None]) / sigma)  # P(age < each edge)
    return np.stack([below[:, 0], below[:, 1] - below[:, 0], 1 - below[:, 1]], axis=1).astype(np.float32)


def check_age_bounds(bounds: Sequence[int] | str, option: str = "age_bounds=") -> tuple[int, int]:
    """``(young_max, old_min)``, the lower edges of bands 1 and 2, from two increasing whole numbers (a pair,
    or text such as ``30,60``). The one check of age bounds: the config, ``data summary`` and every band
    computation call it; a ConfigError naming ``option`` otherwise."""
    try:
        values = bounds.split(",") if isinstance(bounds, str) else list(bounds)
        young_max, old_min = (int(v) for v in values)
    except (TypeError, ValueError):
        young_max = old_min = None
    if young_max is None or not young_max < old_min:
        text = bounds if isinstance(bounds, str) else ",".join(map(str, bounds))
        raise ConfigError(f"{option}{text}: expected two increasing whole numbers, such as 30,60")
    return young_max, old_min


def encode(mask, gender, age):
    """18-class label from mask (0-2), gender (0-1) and age band (0-2); works on ints and arrays."""
    return np.asarray(mask) * 6 + np.asarray(gender) * 3 + np.asarray(age) if np.ndim(mask) else mask * 6 + gender * 3 + age


def decode(label):
    """(mask, gender, age_band) of an 18-class label (int or array)."""
    label = np.asarray(label) if np.ndim(label) else int(label)
    if np.any(np.asarray(label) < 0) or np.any(np.asarray(label) >= NUM_CLASSES):
        raise ValueError(f"class labels must lie in 0..{NUM_CLASSES - 1}, got {label}")
    return label // 6, (label // 3) % 2, label % 3


def class_name(label: int) -> str:
    mask, gender, age = decode(label)
    return f"{MASK_NAMES[mask]}/{GENDER_NAMES[gender]}/{AGE_NAMES[age]}"
