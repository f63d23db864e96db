"""A copy of a finished run whose checkpoints carry other test-time views, to score TTA views without retraining.

    python bench/tta_views.py runs/gender/exp --views scale90 --out runs/tta/gender-scale90
    python bench/generalise.py --no-baseline --runs mask=M age=A gender=runs/tta/gender-scale90 ...

The views `submit --tta` averages come from the config stored in the checkpoint (`tta`: flip is always
among them, then e.g. `scale90`, a centre zoom of 90 % of each side); this writes ``best.pt`` and ``last.pt``
of RUN into OUT with that config key replaced (the weights untouched) and copies ``results.csv``, so the
copy reports the same epochs' seconds. An empty ``--views`` leaves the flip alone.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from maskcls.checkpoint import load_checkpoint, save_checkpoint
from maskcls.config import config_from_dict
from maskcls.transforms import tta_view_zoom


def copy_with_views(run: Path, views: list[str], out: Path) -> list[Path]:
    """``out/<which>.pt`` for each checkpoint of ``run``, its config's ``tta`` set to ``views``."""
    for view in views:
        tta_view_zoom(view)  # a ConfigError for an unknown name, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for which in ("best", "last"):
        source = run / f"{which}.pt"
        if not source.is_file():
            continue
        state = load_checkpoint(source)
        state["config"] = {**state["config"], "tta": list(views)}
        config_from_dict(state["config"])  # still a valid config
        save_checkpoint(out / source.name, **state)
        written.append(out / source.name)
    if (run / "results.csv").is_file():
        shutil.copy2(run / "results.csv", out / "results.csv")
    if not written:
        raise SystemExit(f"{run}: no best.pt or last.pt to copy")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--views", nargs="*", default=[], help="views besides the flip, e.g. scale90 scale80")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    for path in copy_with_views(args.run, args.views, args.out):
        print(f"wrote {path} (tta: flip {' '.join(args.views)})")


if __name__ == "__main__":
    main()
