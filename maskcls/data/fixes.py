"""Label corrections read from YAML and applied when reading; files on disk are never touched.

The file has three optional sections, each keyed by profile id (quote ids: YAML reads 000225 as a number)::

    gender: {"000225": male, "001498-1": female}   # set the gender
    swap_incorrect_normal: ["000020"]              # incorrect_mask.* and normal.* carry each other's label
    age: {"000123": 61}                            # override the age in years
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from .labels import GENDER_BY_NAME, MASK_BY_STEM
from .layout import DataError

COMPETITION_FIXES = Path(__file__).with_name("fixes_competition.yaml")
SECTIONS = ("gender", "swap_incorrect_normal", "age")


@dataclass(frozen=True)
class LabelFixes:
    gender: dict[str, int] = field(default_factory=dict)
    swap_incorrect_normal: tuple[str, ...] = ()
    age: dict[str, int] = field(default_factory=dict)

    def ids(self) -> set[str]:
        return set(self.gender) | set(self.swap_incorrect_normal) | set(self.age)


def resolve_fixes_path(spec: str | Path | None) -> Path | None:
    """``none``/None -> None, ``competition`` -> the shipped file, anything else -> a path."""
    if spec is None or str(spec).lower() in ("", "none"):
        return None
    return COMPETITION_FIXES if str(spec) == "competition" else Path(spec)


def load_fixes(spec: str | Path | None) -> LabelFixes:
    path = resolve_fixes_path(spec)
    if path is None:
        return LabelFixes()
    if not path.is_file():
        raise DataError(f"{path}: label-fixes file does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise DataError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise DataError(f"{path}: unknown section(s) {sorted(unknown)}; expected {', '.join(SECTIONS)}")

    def ids(keys):
        bad = [k for k in keys if not isinstance(k, str)]
        if bad:
            raise DataError(f"{path}: profile id {bad[0]!r} must be a quoted string (YAML reads 000225 as a number)")
        return list(keys)

    genders = raw.get("gender") or {}
    bad_gender = {k: v for k, v in genders.items() if v not in GENDER_BY_NAME}
    if bad_gender:
        raise DataError(f"{path}: gender fix {bad_gender} must be male or female")
    ages = raw.get("age") or {}
    bad_age = {k: v for k, v in ages.items() if not isinstance(v, int) or not 0 <= v < 130}
    if bad_age:
        raise DataError(f"{path}: age fix {bad_age} must be a whole number of years")
    return LabelFixes(
        gender={k: GENDER_BY_NAME[v] for k, v in zip(ids(genders), genders.values())},
        swap_incorrect_normal=tuple(ids(raw.get("swap_incorrect_normal") or [])),
        age=dict(zip(ids(ages), ages.values())),
    )


def apply_fixes(images: pd.DataFrame, fixes: LabelFixes) -> pd.DataFrame:
    """A copy of the image table with the fixes applied; ids not in the table only warn."""
    missing = sorted(fixes.ids() - set(images["person"]))
    if missing:
        warnings.warn(f"label fixes name {len(missing)} profile(s) not in the dataset: {', '.join(missing)}", stacklevel=2)
    fixed = images.copy()
    person = fixed["person"]
    for pid, gender in fixes.gender.items():
        fixed.loc[person == pid, "gender"] = gender
    for pid, age in fixes.age.items():
        fixed.loc[person == pid, "age"] = age
    swap = person.isin(fixes.swap_incorrect_normal)
    incorrect, normal = MASK_BY_STEM["incorrect_mask"], MASK_BY_STEM["normal"]
    fixed.loc[swap & (fixed["mask"] == incorrect), "mask"] = -1
    fixed.loc[swap & (fixed["mask"] == normal), "mask"] = incorrect
    fixed.loc[swap & (fixed["mask"] == -1), "mask"] = normal
    return fixed
