"""The table of tasks. The engine reads a task's label column and class names and never branches on it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import ConfigError
from .data.labels import AGE_NAMES, GENDER_NAMES, MASK_NAMES, NUM_CLASSES, class_name, soft_age_bands


@dataclass(frozen=True)
class Task:
    name: str
    label_column: str  # column of the image table holding the target
    class_names: tuple[str, ...]
    has_age: bool = False  # the label holds the age band as its last digit: label = offset + age_band
    labels: tuple[str, ...] = ()  # the raw labels the target is made of (an extra-data row needs them all)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def soft_targets(self, images: pd.DataFrame, age_bounds, sigma: float) -> np.ndarray:
        """``(n, num_classes)`` targets whose age band is soft (:func:`soft_age_bands` of the real age)
        and whose other parts stay exact: ``label - age_band`` picks the three classes sharing them."""
        if not self.has_age:
            raise ValueError(f"task {self.name!r} has no age band to soften; age_sigma needs age or joint")
        offsets = (images[self.label_column] - images["age_band"]).to_numpy()
        targets = np.zeros((len(images), self.num_classes), dtype=np.float32)
        rows = np.arange(len(images))[:, None]
        targets[rows, offsets[:, None] + np.arange(3)] = soft_age_bands(images["age"], age_bounds, sigma)
        return targets

    def train_targets(self, images: pd.DataFrame, config) -> np.ndarray:
        """What a training image is scored against: its class index, soft age bands (``age_sigma``), or with
        ``age_target: years`` a year distribution per non-age part (maskcls.years)."""
        if config.age_target == "years":
            from .years import year_targets

            offsets = (images[self.label_column] - images["age_band"]).to_numpy()
            return year_targets(images["age"], offsets, self.num_classes // 3, config.age_max, config.age_sigma)
        if config.age_sigma > 0:
            return self.soft_targets(images, config.age_bounds, config.age_sigma)
        return images[self.label_column].to_numpy()


TASKS = {
    "mask": Task("mask", "mask", MASK_NAMES, labels=("mask",)),
    "gender": Task("gender", "gender", GENDER_NAMES, labels=("gender",)),
    "age": Task("age", "age_band", AGE_NAMES, has_age=True, labels=("age",)),
    # the usual single-model baseline: all 18 classes at once
    "joint": Task("joint", "label", tuple(class_name(i) for i in range(NUM_CLASSES)), has_age=True,
                  labels=("mask", "gender", "age")),
}
# the three specialists, in the order of the 18-class label's parts (mask * 6 + gender * 3 + age: decode's order)
SPECIALISTS = tuple(name for name in TASKS if name != "joint")


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]
