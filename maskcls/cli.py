"""The ``maskcls`` command line: parse, then delegate (a few lines per command)."""
from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Mask, gender and age-band classification: three specialists and a rule-based merge.")
data_app = typer.Typer(no_args_is_help=True, help="Check, summarise and generate datasets in the competition layout.")
app.add_typer(data_app, name="data")


class TaskName(str, Enum):
    mask = "mask"
    age = "age"
    gender = "gender"
    joint = "joint"


def fail(message: str) -> None:
    """One line on stderr, exit code 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@data_app.command("check")
def data_check(
    data_dir: Annotated[Path, typer.Argument(help="Dataset folder holding train/ and eval/.")],
    decode: Annotated[bool, typer.Option(help="Decode every image (slower, finds truncated files).")] = True,
):
    """Validate a dataset; report every problem found, exit non-zero if there is any."""
    from .data import check_dataset
    from .progress import progress

    problems = check_dataset(data_dir, decode=decode, progress=lambda xs, total: progress(xs, total=total, desc="decode"))
    for problem in problems:
        typer.echo(f"error: {problem}", err=True)
    if problems:
        typer.echo(f"{data_dir}: {len(problems)} problem(s)", err=True)
        raise typer.Exit(1)
    typer.echo(f"{data_dir}: ok")


@data_app.command("summary")
def data_summary(
    data_dir: Annotated[Path, typer.Argument(help="Dataset folder holding train/.")],
    out: Annotated[Optional[Path], typer.Option(help="Bar chart PNG (default: <data_dir>/../<name>_classes.png).")] = None,
    age_bounds: Annotated[str, typer.Option(help="Lower edges of the 30-old and old bands.")] = "30,60",
    label_fixes: Annotated[str, typer.Option(help="none | competition | path to a fixes YAML.")] = "none",
):
    """Print people and image counts per gender x age band x mask; write the 18-class bar chart PNG."""
    from .data import DataError, class_name, load_train
    from .data.summary import class_counts, format_summary
    from .plots import plot_class_counts

    try:
        images = load_train(data_dir, tuple(int(a) for a in age_bounds.split(",")), label_fixes)
    except DataError as err:
        fail(str(err))
    typer.echo(format_summary(images))
    out = out or data_dir.resolve().parent / f"{data_dir.resolve().name}_classes.png"
    plot_class_counts(class_counts(images).tolist(), [class_name(i) for i in range(18)], out,
                      title=f"{data_dir}: images per class")
    typer.echo(f"\nwrote {out}")


@data_app.command("sample")
def data_sample(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write train/ and eval/ into.")],
    people: Annotated[int, typer.Option(help="Train people (7 images each).")] = 60,
    eval_people: Annotated[int, typer.Option(help="Eval people.")] = 20,
    seed: Annotated[int, typer.Option()] = 0,
):
    """Generate a small synthetic dataset in the competition layout."""
    from .data.sample import make_sample_dataset

    make_sample_dataset(out_dir, people=people, eval_people=eval_people, seed=seed)
    typer.echo(f"wrote {people} train and {eval_people} eval people to {out_dir}")


@app.command()
def train(
    task: Annotated[TaskName, typer.Argument(help="Which specialist (or the joint 18-class baseline).")],
    overrides: Annotated[Optional[List[str]], typer.Argument(help="key=value config overrides, e.g. lr=3e-4 epochs=4.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Run folder to continue from its last.pt.")] = None,
    config_file: Annotated[Optional[Path], typer.Option("--config", help="YAML to use instead of configs/<task>.yaml.")] = None,
):
    """Train one specialist on the shared engine; writes runs/<task>/<name>/."""
    from .checkpoint import CheckpointError, checkpoint_config, load_checkpoint
    from .config import ConfigError, load_config, merge, parse_overrides, validate
    from .data import DataError
    from .engine import fit
    from .models import WeightsError

    try:
        if resume:
            config = checkpoint_config(load_checkpoint(resume / "last.pt"))
            config = merge(config, parse_overrides(overrides or []), "command line")
            validate(config)
        else:
            config = load_config(task.value, overrides or [], config_file)
        run_dir = fit(config, resume=resume)
    except (ConfigError, DataError, WeightsError, CheckpointError) as err:
        fail(str(err))
    typer.echo(f"run folder: {run_dir}")


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option(help="Where the sample dataset and runs go.")] = Path("sample_data"),
):
    """The main job on built-in sample data: generate a tiny dataset, check it, summarise it."""
    steps = [["data", "sample", str(out_dir / "faces"), "--people", "60", "--eval-people", "20"],
             ["data", "check", str(out_dir / "faces")],
             ["data", "summary", str(out_dir / "faces")]]
    for step in steps:
        typer.echo(f"\n$ maskcls {' '.join(step)}")
        app(step, standalone_mode=False)
    typer.echo(f"\ndemo done: sample dataset in {out_dir / 'faces'}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
