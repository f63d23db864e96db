"""How good a submission is against a labels file (18-class and per-task macro F1, accuracy, a per-class
table, the confusion matrix PNG), and how two submissions differ."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_fscore_support

from .data import NUM_CLASSES, DataError, class_name, decode
from .metrics import accuracy, confusion, macro_f1
from .tasks import SPECIALISTS, get_task


def read_answers(path: str | Path) -> pd.Series:
    """``ImageID -> ans`` from a CSV with those columns (others are ignored), in file order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot be read as CSV ({str(err).splitlines()[0]})") from None
    missing = [c for c in ("ImageID", "ans") if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected ImageID,ans")
    if table.empty:
        raise DataError(f"{path}: no rows")
    duplicated = table["ImageID"][table["ImageID"].duplicated()]
    if len(duplicated):
        raise DataError(f"{path}: line {duplicated.index[0] + 2}: duplicated ImageID {duplicated.iloc[0]}")
    answers = pd.to_numeric(table["ans"], errors="coerce")
    bad = ~(answers.between(0, NUM_CLASSES - 1) & (answers % 1 == 0))
    if bad.any():
        line = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: line {line + 2}: ans {table['ans'].iloc[line]!r} is not a class 0..{NUM_CLASSES - 1}")
    return pd.Series(answers.astype(np.int64).to_numpy(), index=table["ImageID"], name="ans")


def matched(answers: pd.Series, reference: pd.Series, path, reference_path) -> pd.Series:
    """``answers`` in ``reference``'s order; refuses a file that does not cover exactly the same ImageIDs."""
    absent = reference.index.difference(answers.index)
    extra = answers.index.difference(reference.index)
    if len(absent) or len(extra):
        examples = lambda ids: f" (e.g. {', '.join(ids[:3])})" if len(ids) else ""  # noqa: E731
        raise DataError(f"{path}: does not cover the ImageIDs of {reference_path}: {len(absent)} missing"
                        f"{examples(list(absent))}, {len(extra)} extra{examples(list(extra))}")
    return answers.reindex(reference.index)


def score(targets, preds) -> dict:
    """18-class macro F1 and accuracy, each task's macro F1, a per-class table, the confusion matrix."""
    targets, preds = np.asarray(targets, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    classes = list(range(NUM_CLASSES))
    precision, recall, f1, support = precision_recall_fscore_support(targets, preds, labels=classes,
                                                                     zero_division=0)
    per_class = pd.DataFrame({"class": classes, "name": [class_name(k) for k in classes], "support": support,
                              "predicted": np.bincount(preds, minlength=NUM_CLASSES), "precision": precision,
                              "recall": recall, "f1": f1})
    true_parts, pred_parts = decode(targets), decode(preds)  # (mask, gender, age)
    parts = dict(zip(SPECIALISTS, zip(true_parts, pred_parts)))
    tasks = {task: macro_f1(*parts[task], get_task(task).num_classes) for task in SPECIALISTS}
    return {"macro_f1": macro_f1(targets, preds, NUM_CLASSES), "accuracy": accuracy(targets, preds),
            "tasks": tasks, "per_class": per_class, "confusion": confusion(targets, preds, NUM_CLASSES),
            "images": len(targets)}


def format_scores(scores: dict, title: str = "") -> str:
    tasks = "  ".join(f"{task} {value:.4f}" for task, value in scores["tasks"].items())
    table = scores["per_class"].to_string(index=False, float_format=lambda v: f"{v:.3f}")
    head = f"{title}: " if title else ""
    return (f"{head}18-class macro F1 {scores['macro_f1']:.4f}  accuracy {scores['accuracy']:.4f}  "
            f"({scores['images']} images)\nper-task macro F1: {tasks}\n{table}")


def evaluate_files(submission: str | Path, labels: str | Path, confusion_png: str | Path | None = None) -> list[str]:
    """``maskcls evaluate``: the report lines; writes the 18x18 confusion matrix PNG."""
    from .plots import plot_confusion

    truth = read_answers(labels)
    answers = matched(read_answers(submission), truth, submission, labels)
    scores = score(truth.to_numpy(), answers.to_numpy())
    png = Path(confusion_png) if confusion_png else Path(submission).with_name(f"{Path(submission).stem}_confusion.png")
    plot_confusion(scores["confusion"], [f"{k} {class_name(k)}" for k in range(NUM_CLASSES)], png,
                   title=f"{Path(submission).name}: macro F1 {scores['macro_f1']:.4f}")
    return [format_scores(scores, title=str(submission)), f"wrote {png}"]


def compare_files(a: str | Path, b: str | Path) -> list[str]:
    """``maskcls compare``: how many answers differ, by class (of A) and by task."""
    first = read_answers(a)
    second = matched(read_answers(b), first, b, a)
    x, y = first.to_numpy(), second.to_numpy()
    differ = x != y
    lines = [f"{int(differ.sum())} of {len(x)} answers differ ({differ.mean():.1%})"]
    by_task = [f"{task} {int((px != py).sum())}" for task, px, py in zip(SPECIALISTS, decode(x), decode(y))]
    lines.append("differ by task: " + "  ".join(by_task))
    classes = range(NUM_CLASSES)
    table = pd.DataFrame({"class": list(classes), "name": [class_name(k) for k in classes],
                          "A": np.bincount(x, minlength=NUM_CLASSES), "B": np.bincount(y, minlength=NUM_CLASSES),
                          "changed": np.bincount(x[differ], minlength=NUM_CLASSES)})
    lines += [f"A = {a}, B = {b}; changed = A's answers of that class that B answers otherwise",
              table.to_string(index=False)]
    return lines
