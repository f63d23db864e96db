"""The table of tasks. The engine reads a task's label column and class names and never branches on it."""
from __future__ import annotations

from dataclasses import dataclass

from .data.labels import AGE_NAMES, GENDER_NAMES, MASK_NAMES, NUM_CLASSES, class_name


@dataclass(frozen=True)
class Task:
    name: str
    label_column: str  # column of the image table holding the target
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


TASKS = {
    "mask": Task("mask", "mask", MASK_NAMES),
    "gender": Task("gender", "gender", GENDER_NAMES),
    "age": Task("age", "age_band", AGE_NAMES),
    # the usual single-model baseline: all 18 classes at once
    "joint": Task("joint", "label", tuple(class_name(i) for i in range(NUM_CLASSES))),
}
SPECIALISTS = ("mask", "gender", "age")


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]
