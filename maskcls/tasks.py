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


TASKS = {
    "mask": Task("mask", "mask", MASK_NAMES),
    "gender": Task("gender", "gender", GENDER_NAMES),
    "age": Task("age", "age_band", AGE_NAMES, has_age=True),
    # the usual single-model baseline: all 18 classes at once
    "joint": Task("joint", "label", tuple(class_name(i) for i in range(NUM_CLASSES)), has_age=True),
}
# the three specialists, in the order of the 18-class label's parts (mask * 6 + gender * 3 + age: decode's order)
SPECIALISTS = tuple(name for name in TASKS if name != "joint")


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]
