"""Likely label errors, ranked from out-of-fold probabilities (``maskcls cv``'s ``oof.csv``).

Per image, cleanlab (confident learning, Northcutt et al. 2021) judges each label against the model that never
saw it: ``cleanlab.rank.get_label_quality_scores`` (the probability given to the label) and
``cleanlab.filter.find_label_issues`` (whether it is an issue: the ``flagged`` column). The competition's
errors are per person, so the evidence is then pooled per person. A row's ``score`` is the evidence for the
fix over the label as the log-likelihood ratio, in nats, of the images involved (their probabilities
multiplied as if independent): above 0 the models favour the fix, and a person whose seven photos all
disagree outranks one confident mistake on one photo, which models make far more often than labellers.

- ``gender``, ``age``: a person's images share the label; a wrong one makes all seven disagree. Flagged when
  cleanlab finds the person's mean probability an issue.
- ``incorrect_normal_swap``: the ``incorrect`` and ``not_wear`` images carry each other's label when exactly
  those two disagree. Flagged when the swap explains the pair better than the labels (score above 0) and
  cleanlab flags at least one of the two. Not "each called as the other": a short-trained mask model is unsure
  between these two classes (p 0.3-0.6 for both), so a swapped pair shifts both probabilities without always
  turning both calls; on bench/audit.py's planted copy, "each called the other and both flagged" found 8 of 20
  swaps, this rule 19 of 20, with no false flag.
- ``mask``: the worst other image whose mask label disagrees; flagged when cleanlab flags any.

Writes ``audit.csv`` (every person and kind, ranked by score), ``audit_images.csv`` (cleanlab's verdict on every
image), ``audit_sheet.png`` (the top suspects' photos
with label and the models' call) and ``fixes_suggested.yaml`` (the flagged ones, in the ``label_fixes=``
format, for a person to review). Never edits the data.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .data import DataError, decode, load_train
from .data.labels import AGE_NAMES, GENDER_NAMES, MASK_NAMES
from .io import atomic_write_csv, atomic_write_text, check_writable
from .predictions import read_predictions

KINDS = ("gender", "incorrect_normal_swap", "age", "mask")
PART = {"mask": 0, "gender": 1, "age": 2}  # which part of decode(label) is each task's class
CLASS_NAMES = {"mask": MASK_NAMES, "gender": GENDER_NAMES, "age": AGE_NAMES}
INCORRECT, NOT_WORN = 1, 2  # mask classes of incorrect_mask.* and normal.*
COLUMNS = ["rank", "person", "kind", "score", "flagged", "label", "call", "evidence", "folder"]


@dataclass
class TaskTable:
    """One task's out-of-fold predictions over the training images, with cleanlab's per-image verdicts."""

    task: str
    images: pd.DataFrame  # path (relative to the data folder), file, person, folder, stem, label
    probs: np.ndarray  # (images, classes)
    quality: np.ndarray  # cleanlab's label quality per image (probability of the label): low is suspect
    issue: np.ndarray  # cleanlab's find_label_issues per image

    def name(self, k: int) -> str:
        return CLASS_NAMES[self.task][k]


def oof_file(path: str | Path) -> Path:
    """A CV folder's ``oof.csv``, or the CSV given."""
    from .runs import OOF_FILE

    return Path(path) / OOF_FILE if Path(path).is_dir() else Path(path)


def load_task_table(path: str | Path, task: str, data_dir: str | Path) -> TaskTable:
    """The out-of-fold table of ``task`` (a CV folder or its oof.csv), matched to the images of ``data_dir``."""
    predictions = read_predictions(oof_file(path), task)
    if predictions.split != "val" or predictions.label is None:
        raise DataError(f"{predictions.path}: needs out-of-fold validation predictions with labels (maskcls cv)")
    labels = decode(predictions.label)[PART[task]]
    _check_task(predictions, task, labels)
    images = load_train(data_dir)
    images["key"] = [Path(p).relative_to(data_dir).as_posix() for p in images["path"]]
    found = images.set_index("key").reindex(predictions.keys)
    if found["person"].isna().any():
        missing = predictions.keys[found["person"].isna().to_numpy()][0]
        raise DataError(f"{predictions.path}: image {missing} is not in {Path(data_dir) / 'train'}")
    if len(predictions.keys) < len(images):  # each key is an image (no duplicate, none foreign): some are missing
        missing = images["key"][~images["key"].isin(predictions.keys)].iloc[0]
        raise DataError(f"{predictions.path}: covers {len(predictions.keys)} of the {len(images)} training images "
                        f"(none for {missing}); truncated? out-of-fold predictions cover every image once")
    table = pd.DataFrame({"path": predictions.keys, "file": found["path"].to_numpy(),
                          "person": found["person"].to_numpy(), "folder": [Path(k).parent.name for k in predictions.keys],
                          "stem": found["stem"].to_numpy(), "label": labels})
    quality, issue = cleanlab_verdicts(labels, predictions.probs)
    return TaskTable(task, table, predictions.probs, quality, issue)


def _check_task(predictions, task: str, labels: np.ndarray) -> None:
    """The table is ``task``'s: its CV folder's summary says so (its own note is checked as it is read), and its
    ``target`` column is the ``task`` class of each label (mask and age both have three classes)."""
    from .runs import SUMMARY_FILE

    summary = predictions.path.parent / SUMMARY_FILE
    try:
        said = json.loads(summary.read_text()).get("task") if summary.is_file() else None
    except (json.JSONDecodeError, AttributeError):
        raise DataError(f"{summary}: not a maskcls cv summary") from None
    if said not in (None, task):
        raise DataError(f"{predictions.path}: holds {said} predictions (see {summary.name}), not {task}")
    target = pd.read_csv(predictions.path, usecols=lambda column: column == "target")
    if "target" in target and (target["target"].to_numpy() != labels).any():
        raise DataError(f"{predictions.path}: its target column is not the {task} class of its labels; another "
                        f"task's out-of-fold predictions?")


def cleanlab_verdicts(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(label quality, is an issue) per row, from cleanlab."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels, probs = np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)  # CSV rounding leaves sums of 1 +- 1e-6
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    issue = find_label_issues(labels, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    return quality, issue


# --- per person -----------------------------------------------------------------------------------

def log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(probs, 1e-6, None))  # one probability of 0 must not outweigh six photos


def person_label_rows(table: TaskTable) -> list[dict]:
    """``gender`` or ``age`` rows: one label per person; the fix is the class with the most evidence."""
    people = table.images.assign(row=np.arange(len(table.images))).groupby("person", sort=True)
    rows_of = [group["row"].to_numpy() for _, group in people]
    labels = np.array([table.images["label"].iloc[rows[0]] for rows in rows_of])
    _, issue = cleanlab_verdicts(labels, np.stack([table.probs[rows].mean(axis=0) for rows in rows_of]))
    out = []
    for person, rows, label, flagged in zip(people.groups, rows_of, labels, issue):
        evidence = log_probs(table.probs[rows]).sum(axis=0)
        alternative = int(np.argmax(np.where(np.arange(len(evidence)) == label, -np.inf, evidence)))
        disagree = int((table.probs[rows].argmax(axis=1) != label).sum())
        mean = table.probs[rows, alternative].mean()
        out.append({"person": person, "kind": table.task, "score": float(evidence[alternative] - evidence[label]),
                    "flagged": bool(flagged), "label": table.name(label), "call": table.name(alternative),
                    "evidence": f"{disagree}/{len(rows)} images called other than {table.name(label)}; mean "
                                f"p({table.name(alternative)}) {mean:.2f}",
                    "folder": table.images["folder"].iloc[rows[0]]})
    return out


def mask_rows(table: TaskTable) -> list[dict]:
    """Per person: an ``incorrect_normal_swap`` row, and a ``mask`` row for the worst of its other images."""
    out, logs = [], log_probs(table.probs)
    for person, group in table.images.assign(row=np.arange(len(table.images))).groupby("person", sort=True):
        rows = group["row"].to_numpy()
        incorrect, not_worn = rows[group["label"] == INCORRECT], rows[group["label"] == NOT_WORN]
        folder = group["folder"].iloc[0]
        swapped = False
        if len(incorrect) == 1 and len(not_worn) == 1:
            a, b = incorrect[0], not_worn[0]
            score = logs[a, NOT_WORN] + logs[b, INCORRECT] - logs[a, INCORRECT] - logs[b, NOT_WORN]
            swapped = bool(score > 0 and (table.issue[a] or table.issue[b]))
            out.append({"person": person, "kind": "incorrect_normal_swap", "score": float(score),
                        "flagged": swapped, "label": "as labelled", "call": "swapped" if swapped else "as labelled",
                        "evidence": f"{table.images['stem'].iloc[a]} (incorrect) p(not_wear) "
                                    f"{table.probs[a, NOT_WORN]:.2f}, {table.images['stem'].iloc[b]} (not_wear) "
                                    f"p(incorrect) {table.probs[b, INCORRECT]:.2f}",
                        "folder": folder})
        others = np.setdiff1d(rows, np.concatenate([incorrect, not_worn])) if swapped else rows
        if len(others):
            labels = table.images["label"].to_numpy()[others]
            own = logs[others, labels]
            best_other = np.where(np.arange(logs.shape[1]) == labels[:, None], -np.inf, logs[others]).max(axis=1)
            worst = int(np.argmax(best_other - own))
            row, label, call = others[worst], int(labels[worst]), int(table.probs[others[worst]].argmax())
            out.append({"person": person, "kind": "mask", "score": float(best_other[worst] - own[worst]),
                        "flagged": bool(table.issue[others].any()), "label": table.name(label),
                        "call": table.name(call),
                        "evidence": f"{table.images['stem'].iloc[row]}: labelled {table.name(label)}, called "
                                    f"{table.name(call)} ({table.probs[row, call]:.2f}); "
                                    f"{int(table.issue[others].sum())} image(s) flagged",
                        "folder": folder})
    return out


def rank_suspects(tables: dict[str, TaskTable]) -> pd.DataFrame:
    """Every person and kind the given tasks allow, most evidence first (ties: kind order, then person)."""
    rows = []
    if "gender" in tables:
        rows += person_label_rows(tables["gender"])
    if "age" in tables:
        rows += person_label_rows(tables["age"])
    if "mask" in tables:
        rows += mask_rows(tables["mask"])
    if not rows:
        raise DataError("audit needs at least one of --mask, --gender, --age")
    frame = pd.DataFrame(rows)
    frame["order"] = frame["kind"].map(KINDS.index)
    frame = frame.sort_values(["score", "order", "person"], ascending=[False, True, True], kind="stable")
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    return frame[COLUMNS].reset_index(drop=True)


def image_verdicts(tables: dict[str, TaskTable]) -> pd.DataFrame:
    """cleanlab's verdict on every image of every task, the least credible labels first."""
    frames = [pd.DataFrame({"path": t.images["path"], "person": t.images["person"], "task": task,
                            "label": [t.name(k) for k in t.images["label"]],
                            "call": [t.name(k) for k in t.probs.argmax(axis=1)], "quality": t.quality,
                            "issue": t.issue}) for task, t in tables.items()]
    return pd.concat(frames).sort_values("quality", kind="stable").reset_index(drop=True)


# --- outputs --------------------------------------------------------------------------------------

def suggested_fixes(suspects: pd.DataFrame, source: str, notes_limit: int = 50) -> str:
    """The flagged gender flips and swaps as a label-fix YAML, each with its evidence; the strongest age and
    single-image mask suspects as comments (the format cannot say them: an age needs years, and the only mask
    fix is the swap)."""
    flagged = suspects[suspects["flagged"]]
    lines = [f"# suggested by `maskcls audit` from {source}",
             "# review each before use (label_fixes=<this file>); relative to the labels the runs trained on"]
    gender = [r for r in flagged.itertuples() if r.kind == "gender"]
    swap = [r for r in flagged.itertuples() if r.kind == "incorrect_normal_swap"]
    if gender:
        lines += ["gender:", *(f"  {json.dumps(r.person)}: {r.call}  # was {r.label}: {r.evidence}" for r in gender)]
    if swap:
        lines += ["swap_incorrect_normal:", *(f"  - {json.dumps(r.person)}  # {r.evidence}" for r in swap)]
    others = [r for r in flagged.itertuples() if r.kind in ("age", "mask")][:notes_limit]
    if others:
        lines += [f"# to check by eye ({len(others)} flagged, strongest first; not expressible as fixes):",
                  *(f"#   {r.person} {r.kind}: labelled {r.label}, models say {r.call} ({r.evidence})" for r in others)]
    return "\n".join(lines) + "\n"


def write_sheet(suspects: pd.DataFrame, tables: dict[str, TaskTable], path: Path, top: int) -> Path:
    """One row per top suspect (score above 0): a card (rank, person, kind, label, call), then the person's photos captioned
    ``stem label>call`` for the kind's task, red where the two disagree."""
    from PIL import Image

    from .data.images import open_rgb
    from .plots import save_contact_sheet

    images, captions, flagged = [], [], []
    shown = suspects[suspects["score"] > 0].head(top)  # the models favour the fix
    for row in shown.itertuples():
        table = tables["mask" if row.kind in ("mask", "incorrect_normal_swap") else row.kind]
        photos = table.images[table.images["person"] == row.person]
        images.append(_card([f"#{row.rank} {row.person}", row.kind, f"label {row.label}", f"call {row.call}",
                             f"score {row.score:+.1f}"]))
        captions.append(row.folder)
        flagged.append(bool(row.flagged))
        for i, photo in photos.sort_values("stem").iterrows():
            call = int(table.probs[i].argmax())
            images.append(open_rgb(photo["file"]))
            captions.append(f"{photo['stem'][:8]} {table.name(photo['label'])[:5]}>{table.name(call)[:5]}")
            flagged.append(call != photo["label"])
        images += [Image.new("RGB", (8, 8), (32, 32, 32))] * (7 - len(photos))  # keep one person a row
        captions += [""] * (7 - len(photos))
        flagged += [False] * (7 - len(photos))
    return save_contact_sheet(images, captions, path, flagged=flagged, columns=8,
                              title=f"top {len(shown)} suspects: card, then photos "
                                    f"(caption: label>models' call, red: they disagree)")


def _card(lines: Sequence[str], size: int = 124):
    from PIL import Image, ImageDraw

    card = Image.new("RGB", (size, size), (60, 60, 90))
    draw = ImageDraw.Draw(card)
    for i, line in enumerate(lines):
        draw.text((4, 4 + 16 * i), line[:20], fill=(255, 255, 255))
    return card


@dataclass
class AuditResult:
    suspects: pd.DataFrame
    out_dir: Path

    def format(self, shown: int = 10) -> list[str]:
        flagged = self.suspects[self.suspects["flagged"]]
        counts = ", ".join(f"{kind} {int((flagged['kind'] == kind).sum())}" for kind in KINDS
                           if kind in set(self.suspects["kind"]))
        lines = [f"flagged by cleanlab: {counts}", f"top {shown}:"]
        lines += [f"  {r.rank:>3} {r.person} {r.kind:<22} {r.score:+7.2f} {'*' if r.flagged else ' '} {r.evidence}"
                  for r in self.suspects.head(shown).itertuples()]
        return lines + [f"wrote {self.out_dir / 'audit.csv'}, audit_images.csv, audit_sheet.png, "
                        f"fixes_suggested.yaml"]


def run_audit(data_dir: str | Path, cvs: dict[str, str | Path | None], out_dir: str | Path | None = None,
              top: int = 24) -> AuditResult:
    """``maskcls audit``: rank suspects from each given task's CV folder (or oof.csv); write the three files
    into ``out_dir`` (default ``<project>/audit`` of the first CV folder)."""
    given = {task: path for task, path in cvs.items() if path is not None}
    if not given:
        raise DataError("audit needs at least one of --mask, --gender, --age (a CV folder or its oof.csv)")
    if not Path(data_dir).is_dir():
        raise DataError(f"{data_dir}: dataset folder does not exist")
    out_dir = Path(out_dir) if out_dir else oof_file(next(iter(given.values()))).resolve().parent.parent.parent / "audit"
    check_writable(out_dir, folder=True)
    tables = {task: load_task_table(path, task, data_dir) for task, path in given.items()}
    suspects = rank_suspects(tables)
    atomic_write_csv(out_dir / "audit.csv", suspects, float_format="%.4f")
    source = ", ".join(f"{task} {oof_file(path)}" for task, path in given.items())
    atomic_write_text(out_dir / "fixes_suggested.yaml", suggested_fixes(suspects, source))
    atomic_write_csv(out_dir / "audit_images.csv", image_verdicts(tables), float_format="%.4f")
    write_sheet(suspects, tables, out_dir / "audit_sheet.png", top)
    return AuditResult(suspects, out_dir)
