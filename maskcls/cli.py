"""The ``maskcls`` command line: parse, then delegate (a few lines per command)."""
from __future__ import annotations

import os
import shutil
from enum import Enum
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from typer.core import TyperGroup

from .data.faces import DETECTORS, MARGIN_RANGE, CropSettings
from .data.labels import DEFAULT_AGE_BOUNDS
from .errors import MaskclsError
from .tasks import SPECIALISTS, TASKS


def fail(message: str) -> None:
    """One line on stderr, exit code 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


# old spellings a user may still type -> today's; each use prints a one-line note on stderr
RENAMED_COMMANDS = {("data", "sample"): ("data", "synth")}
RENAMED_OPTIONS = {"--engine": "--runtime"}


def renamed(args: list[str]) -> list[str]:
    """``args`` with every old spelling of a command or option replaced by today's, noting each on stderr."""
    args = list(args)
    for old, new in RENAMED_COMMANDS.items():
        if tuple(args[:len(old)]) == old:
            args[:len(old)] = new
            typer.echo(f"note: `maskcls {' '.join(old)}` is now `maskcls {' '.join(new)}`", err=True)
    for index, arg in enumerate(args):
        if arg == "--":  # what follows is arguments, never options
            break
        name, equals, value = arg.partition("=")
        if name in RENAMED_OPTIONS:
            args[index] = RENAMED_OPTIONS[name] + equals + value
            typer.echo(f"note: {name} is now {RENAMED_OPTIONS[name]}", err=True)
    return args


class _Commands(TyperGroup):
    """Every command (and subcommand) runs inside this: a user-facing error becomes its one-line message."""

    def parse_args(self, ctx, args):
        if ctx.parent is None:  # the whole command line, once
            args = renamed(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MaskclsError as err:
            fail(str(err))
        except typer.BadParameter as err:  # an option's value out of its range or choices, as a bad config value
            if type(err) is not typer.BadParameter:  # MissingParameter: a missing argument stays a usage error
                raise
            fail(_bad_parameter(err))


def _bad_parameter(err: typer.BadParameter) -> str:
    """click's message, which names the option, with the value given (typer's range check omits it)."""
    errors = getattr(err.__cause__, "errors", lambda: [])()
    given = f" (got {errors[0]['input']})" if errors and "input" in errors[0] else ""
    return " ".join(f"{err.format_message()}{given}".split())


app = typer.Typer(cls=_Commands, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Mask, gender and age-band classification: three specialists and a rule-based merge.")
data_app = typer.Typer(no_args_is_help=True, help="Check, summarise and generate datasets in the competition layout.")
app.add_typer(data_app, name="data")
export_app = typer.Typer(no_args_is_help=True, help="Export trained runs for deployment.")
app.add_typer(export_app, name="export")


def choices(name: str, values) -> type[Enum]:
    """A str Enum of ``values``: typer lists them in --help and refuses any other word in one line."""
    return Enum(name, {value: value for value in values}, type=str)


TaskName = choices("TaskName", TASKS)  # the task table's names
ProfileName = choices("ProfileName", ("cpu", "gpu"))  # maskcls.config.PROFILES (config imports torch; --help should not)
DetectorName = choices("DetectorName", DETECTORS)


@data_app.command("check")
def data_check(
    data_dir: Annotated[Path, typer.Argument(help="Dataset folder holding train/ and eval/.")],
    decode: Annotated[bool, typer.Option(help="Decode every image (slower, finds truncated files).")] = True,
):
    """Validate a dataset, or an extra_data folder (images/ + labels.csv); report every problem, exit 1 if any."""
    from .data import check_dataset
    from .data.extra import check_extra, is_extra_folder
    from .progress import progress

    check = check_extra if is_extra_folder(data_dir) else check_dataset
    found = check(data_dir, decode=decode, progress=lambda xs, total: progress(xs, total=total, desc="decode"))
    problems = [problem for problem in found if not problem.warning]
    for problem in found:
        typer.echo(f"{'warning' if problem.warning else 'error'}: {problem}", err=True)
    if problems:
        typer.echo(f"{data_dir}: {len(problems)} problem(s)", err=True)
        raise typer.Exit(1)
    typer.echo(f"{data_dir}: ok")


@data_app.command("summary")
def data_summary(
    data_dir: Annotated[Path, typer.Argument(help="Dataset folder holding train/.")],
    out: Annotated[Optional[Path], typer.Option(help="Bar chart PNG (default: <data_dir>/../<name>_classes.png).")] = None,
    age_bounds: Annotated[str, typer.Option(help="Lower edges of the 30-old and old bands.")] = ",".join(map(str, DEFAULT_AGE_BOUNDS)),
    label_fixes: Annotated[str, typer.Option(help="none | competition | path to a fixes YAML.")] = "none",
):
    """Print people and image counts per gender x age band x mask; write the 18-class bar chart PNG."""
    from .data import class_name, load_train
    from .data.labels import check_age_bounds
    from .data.summary import class_counts, format_summary
    from .io import check_writable
    from .plots import plot_class_counts

    out = check_writable(out or data_dir.resolve().parent / f"{data_dir.resolve().name}_classes.png")
    images = load_train(data_dir, check_age_bounds(age_bounds, "--age-bounds "), label_fixes)
    typer.echo(format_summary(images))
    plot_class_counts(class_counts(images).tolist(), [class_name(i) for i in range(18)], out,
                      title=f"{data_dir}: images per class")
    typer.echo(f"\nwrote {out}")


@data_app.command("synth")
def data_synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write train/ and eval/ into.")],
    people: Annotated[int, typer.Option(min=1, help="Train people (7 images each).")] = 60,
    eval_people: Annotated[int, typer.Option(min=1, help="Eval people.")] = 20,
    seed: Annotated[int, typer.Option(min=0)] = 0,
):
    """Synthesise a small dataset of drawn faces in the competition layout."""
    from .data.sample import make_sample_dataset
    from .io import check_writable

    check_writable(out_dir, folder=True)
    make_sample_dataset(out_dir, people=people, eval_people=eval_people, seed=seed)
    typer.echo(f"wrote {people} train and {eval_people} eval people to {out_dir}")


def _check_outputs(config, resume: Path | None = None) -> None:
    """The folders a training writes, checked before it reads an image: its run folder, and the crop cache
    that crop=faces fills with the faces it detects."""
    from .data.crop import resolve_cache_dir
    from .io import check_writable

    check_writable(resume or config.project, folder=True)
    if config.crop == "mtcnn":
        check_writable(resolve_cache_dir(config.data_dir, config.crop_cache or None), folder=True)


@app.command()
def train(
    task: Annotated[TaskName, typer.Argument(help="Which specialist (or the joint 18-class baseline).")],
    overrides: Annotated[Optional[List[str]], typer.Argument(help="key=value config overrides, e.g. lr=3e-4 epochs=4.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Run folder to continue from its last.pt, or an ensemble "
                                                        "folder to finish its members.")] = None,
    config_file: Annotated[Optional[Path], typer.Option("--config", help="YAML to use instead of configs/<task>.yaml.")] = None,
    profile: Annotated[ProfileName, typer.Option(help="cpu: configs/<task>.yaml, the measured CPU recipe; gpu: "
                                                      "configs/gpu/<task>.yaml (EfficientNet-B3, untested).")] = ProfileName.cpu,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the resolved config (the run folder's "
                                                                      "config.yaml) and exit; reads no data.")] = False,
):
    """Train one specialist on the shared engine; writes runs/<task>/<name>/ (with ensemble: N, its N members in
    member0..member<N-1>/; the same command, or --resume on the folder, finishes an interrupted one)."""
    from .checkpoint import checkpoint_config, load_checkpoint
    from .config import (ConfigError, config_from_dict, config_yaml, load_config, merge, parse_overrides, read_yaml,
                         validate)
    from .engine import fit
    from .ensemble import train_ensemble

    one_run = resume is not None and (resume / "last.pt").is_file()  # else an ensemble folder: members inside
    if resume:  # a run continues from its last.pt, an ensemble folder from its config.yaml
        if one_run or not (resume / "config.yaml").is_file():  # neither: load_checkpoint names the missing last.pt
            config = checkpoint_config(load_checkpoint(resume / "last.pt"))
        else:
            config = config_from_dict(read_yaml(resume / "config.yaml"))
        config = merge(config, parse_overrides(overrides or []), "command line")
        validate(config)
    else:
        config = load_config(task.value, overrides or [], config_file, profile.value)
    if resume and config.task != task.value:  # train gender --resume <a mask run> would go on as a mask run
        raise ConfigError(f"{resume}: is a {config.task} run, not {task.value}")
    if print_config:
        typer.echo(config_yaml(config), nl=False)
        return
    _check_outputs(config, resume)
    if config.ensemble > 1 and not one_run:  # a member (--resume <folder>/member1) is one run
        run_dir = train_ensemble(config, resume)
    else:
        run_dir = fit(config, resume=resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone reports
        typer.echo(f"run folder: {run_dir}")


@app.command()
def cv(
    task: Annotated[TaskName, typer.Argument(help="Which specialist (or the joint 18-class baseline).")],
    overrides: Annotated[Optional[List[str]], typer.Argument(help="key=value config overrides, e.g. folds=5 epochs=4.")] = None,
    tta: Annotated[bool, typer.Option(help="Out-of-fold probabilities averaged over the original, flipped and config `tta` views.")] = False,
    config_file: Annotated[Optional[Path], typer.Option("--config", help="YAML to use instead of configs/<task>.yaml.")] = None,
):
    """Train every fold into runs/<task>/<name>/fold<k>/ (name: cv), then write oof.csv and cv.json.

    Re-running the same command skips finished folds and resumes unfinished ones.
    """
    from .config import load_config
    from .cv import run_cv

    config = load_config(task.value, overrides or [], config_file)
    _check_outputs(config)
    result = run_cv(config, tta)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone reports
        typer.echo("\n".join(result.format()))


@app.command()
def crop(
    data_dir: Annotated[Path, typer.Argument(help="Dataset folder holding train/ and eval/.")],
    margin: Annotated[float, typer.Option(min=MARGIN_RANGE[0], max=MARGIN_RANGE[1],
                                          help="The contact sheet's crops: grow the face box by this fraction of its "
                                               "size on every side (training applies the run's crop_margin).")] = CropSettings.margin,
    fallback: Annotated[float, typer.Option(min=0.01, max=1,
                                            help="The contact sheet's centre crop, of this fraction of the image, "
                                                 "where no face is found.")] = CropSettings.fallback,
    square: Annotated[bool, typer.Option(help="The contact sheet's crops: square the face box first.")] = CropSettings.square,
    detector: Annotated[DetectorName, typer.Option(help="What finds the faces (a run's crop_detector: configs/ use "
                                                        "retinaface); each has its own cache.")] = DetectorName.retinaface,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Default: <data_dir parent>/.maskcls_cache/<name>.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=4096, help="Images per detector batch.")] = 32,
    sheet: Annotated[Optional[Path], typer.Option(help="Contact sheet PNG (default: <cache>/contact_sheet.png).")] = None,
    extra: Annotated[Optional[List[Path]], typer.Option(help="An extra_data folder to crop too (its cache beside "
                                                             "it); repeatable.")] = None,
):
    """Detect the face in every train and eval image with RetinaFace (or MTCNN) and cache the boxes (re-runs reuse
    them; a run cuts its crops from them with its crop_margin / crop_square, so those need no new detection).
    A training with crop=faces fills the cache of its train images itself the first time; this does it ahead.

    DATA_DIR may also be an extra_data folder (images/ + labels.csv)."""
    from .data.crop import resolve_cache_dir, run_crop
    from .io import check_writable

    for folder, cache in [(data_dir, cache_dir), *((folder, None) for folder in extra or [])]:
        check_writable(resolve_cache_dir(folder, cache), folder=True)
    if sheet:
        check_writable(sheet)
    settings = CropSettings.for_detector(detector.value, margin=margin, fallback=fallback, square=square)
    summaries = [run_crop(data_dir, settings, cache_dir=cache_dir, batch_size=batch_size, sheet=sheet)]
    summaries += [run_crop(folder, settings, batch_size=batch_size) for folder in extra or []]
    for summary in summaries:
        for message in summary.bad:
            typer.echo(f"warning: skipped {message}", err=True)
        typer.echo(summary.format())
        typer.echo(f"wrote {summary.sheet}")


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option(help="Where the sample dataset, runs and submission go.")] = Path("sample_data"),
    epochs: Annotated[int, typer.Option(min=1, max=1000, help="Epochs per specialist.")] = 3,
):
    """The main job on built-in sample data: generate, check, summarise, train the three specialists, submit, score."""
    faces, runs = out_dir / "faces", out_dir / "runs"
    tiny = ["backbone=test_efficientnet", "pretrained=none", "crop=none", "warmup_epochs=1", "img_size=48",
            "batch_size=16", "lr=3e-3",
            f"epochs={epochs}", "folds=4", f"data_dir={faces}", f"project={runs}", "name=demo"]
    steps = [["data", "synth", str(faces), "--people", "60", "--eval-people", "20"],
             ["data", "check", str(faces)],
             ["data", "summary", str(faces)],
             *(["train", task, *tiny] for task in SPECIALISTS),
             ["submit", "--tta", "--project", str(runs), "--out", str(out_dir / "submission.csv")],
             ["evaluate", str(out_dir / "submission.csv"), str(faces / "eval" / "labels.csv")]]
    if (runs / "mask" / "demo").exists():
        shutil.rmtree(runs)  # a second demo starts afresh instead of resuming
    for step in steps:
        typer.echo(f"\n$ maskcls {' '.join(step)}", err=False)
        app(step, standalone_mode=False)
    typer.echo(f"\ndemo done: data {faces}, runs {runs}, submission {out_dir / 'submission.csv'}")


# --- predict, combine, submit, evaluate, compare --------------------------------------------------

SplitName = choices("SplitName", ("eval", "val"))
VoteName = choices("VoteName", ("soft", "hard"))
Checkpoint = choices("Checkpoint", ("best", "last"))
RuntimeName = choices("RuntimeName", ("torch", "onnx"))  # maskcls.infer.RUNTIMES (infer imports torch)


BadImage = choices("BadImage", ("fail", "fallback"))


# options shared by the commands that load trained runs (submit, detect, export onnx)
MaskRuns = Annotated[Optional[List[Path]], typer.Option(help="Mask run or CV folder (its folds); repeatable (default: newest in <project>/mask).")]
AgeRuns = Annotated[Optional[List[Path]], typer.Option(help="Age run or CV folder (its folds); repeatable (default: newest in <project>/age).")]
GenderRuns = Annotated[Optional[List[Path]], typer.Option(help="Gender run or CV folder (its folds); repeatable (default: newest in <project>/gender).")]
JointRuns = Annotated[Optional[List[Path]], typer.Option(help="Instead of the specialists: a joint 18-class run or CV folder; repeatable.")]
ProjectDir = Annotated[Optional[Path], typer.Option(help="Folder holding <task>/<run>/ for the default runs "
                                                           "(default: runs, else the bundled specialist).")]
Bundled = Annotated[bool, typer.Option("--bundled", help="The bundled specialists for every task not named "
                                                         "(--mask RUN ...), whatever runs/ holds.")]
WhichCheckpoint = Annotated[Checkpoint, typer.Option(help="Checkpoint in each run folder.")]
DeviceName = Annotated[str, typer.Option(help="auto | cpu | cuda | mps.")]


def _specialist_runs(mask, age, gender, project: Path | None, which: str, bundled: bool) -> dict[str, list[Path]]:
    from .bundle import resolve_runs

    if bundled and project is not None:
        fail("--bundled and --project: pass one (the bundle, or the newest runs of the project)")
    return resolve_runs({"mask": mask, "age": age, "gender": gender}, project, which, bundled)


@app.command()
def predict(
    task: Annotated[TaskName, typer.Argument(help="Which task the runs were trained for.")],
    runs: Annotated[List[Path], typer.Argument(help="Run folders, CV folders (their folds) or .pt files of that task, "
                                                    "or the word bundled (the bundled specialist); several are voted.")],
    data_dir: Annotated[Path, typer.Argument(help="Dataset folder holding eval/ (and train/ for --split val).")],
    split: Annotated[SplitName, typer.Option(help="eval: info.csv images; val: the runs' held-out people.")] = SplitName.eval,
    tta: Annotated[bool, typer.Option(help="Average the original, flipped and config `tta` views.")] = False,
    vote: Annotated[VoteName, typer.Option(help="soft: mean probability; hard: majority of argmaxes.")] = VoteName.soft,
    out: Annotated[Optional[Path], typer.Option(help="CSV (default: <first run>/pred_<split>[_tta][_<vote>N].csv).")] = None,
    which: WhichCheckpoint = Checkpoint.best,
    device: DeviceName = "auto",
    runtime: Annotated[RuntimeName, typer.Option(help="torch, or onnx: each run's <which>.onnx on onnxruntime "
                                                      "(maskcls export onnx).")] = RuntimeName.torch,
):
    """Write per-image class probabilities of one task's runs to a CSV (and a JSON note beside it)."""
    from .bundle import resolve_runs
    from .io import check_writable
    from .predictions import default_output, predict_runs, write_predictions

    runs = resolve_runs({task.value: runs}, which=which.value, tasks=[task.value])[task.value]
    out = check_writable(out or default_output(runs, split.value, tta, vote.value))
    table, note = predict_runs(runs, split.value, data_dir, tta, vote.value, which.value, device, task.value,
                               runtime.value)
    path = write_predictions(table, out, note)
    typer.echo(f"{task.value} {split.value}: {len(table)} images, {len(runs)} run(s), views {'+'.join(note['views'])}"
               f" -> {path}")


@app.command()
def combine(
    mask: Annotated[Path, typer.Argument(help="Mask prediction CSV (from maskcls predict).")],
    age: Annotated[Path, typer.Argument(help="Age prediction CSV.")],
    gender: Annotated[Path, typer.Argument(help="Gender prediction CSV.")],
    out: Annotated[Optional[Path], typer.Option(help="Eval: submission (default submission.csv); val: path,ans,label.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder with eval/info.csv (default: the mask CSV's note).")] = None,
    tune: Annotated[bool, typer.Option(help="Val inputs: fit per-class biases for 18-class macro F1; store them.")] = False,
    bias: Annotated[Optional[str], typer.Option(help="Bias YAML, or none (default: the stored one, if tuned on these runs).")] = None,
    bias_out: Annotated[Optional[Path], typer.Option(help="Where --tune stores it (default: <project>/bias.yaml).")] = None,
):
    """Merge mask, age and gender predictions into 18 classes: a submission (eval) or a score (val)."""
    from .combine import combine_files

    lines = combine_files(mask, age, gender, out, data_dir, tune, bias, bias_out)
    typer.echo("\n".join(lines))


@app.command()
def submit(
    mask: MaskRuns = None,
    age: AgeRuns = None,
    gender: GenderRuns = None,
    joint: JointRuns = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder with eval/ (default: the runs' data_dir; "
                                                          "needed with the bundle).")] = None,
    tta: Annotated[bool, typer.Option(help="Average the original, flipped and config `tta` views.")] = False,
    out: Annotated[Path, typer.Option(help="Submission CSV to write.")] = Path("submission.csv"),
    bias: Annotated[Optional[str], typer.Option(help="Bias YAML, or none (default: <project>/bias.yaml if tuned on these runs).")] = None,
    project: ProjectDir = None,
    bundled: Bundled = False,
    which: WhichCheckpoint = Checkpoint.best,
    device: DeviceName = "auto",
    on_bad_image: Annotated[BadImage, typer.Option(help="An eval image that does not decode: fail (write nothing), "
                                                        "or fallback (answer it with the most frequent class of the "
                                                        "others, and warn).")] = BadImage.fail,
):
    """Predict eval with the best checkpoint of each task and combine them into the 18-class submission CSV.

    Several runs of one task are averaged (soft vote).
    """
    from .io import check_writable
    from .runs import expand_runs
    from .submit import make_joint_submission, make_submission

    check_writable(out)
    if joint:
        lines = make_joint_submission(expand_runs(joint), out, data_dir, tta, which.value, device, on_bad_image.value)
    else:
        runs = _specialist_runs(mask, age, gender, project, which.value, bundled)
        lines = make_submission(runs, out, data_dir, tta, bias, which.value, device, on_bad_image.value)
    for line in lines:
        typer.echo(line, err=line.startswith("warning:"))


@app.command()
def evaluate(
    submission: Annotated[Path, typer.Argument(help="Submission CSV (ImageID,ans).")],
    labels: Annotated[Path, typer.Argument(help="Labels CSV with the true ans per ImageID (e.g. eval/labels.csv).")],
    confusion_png: Annotated[Optional[Path], typer.Option("--confusion", help="PNG (default: <submission>_confusion.png).")] = None,
    ages: Annotated[Optional[Path], typer.Option(help="CSV with ImageID,age_years (predict of an age_target=years "
                                                      "run): age MAE against the labels' age column.")] = None,
):
    """Print 18-class and per-task macro F1, accuracy and a per-class table; write the confusion matrix PNG."""
    from .evaluate import evaluate_files

    lines = evaluate_files(submission, labels, confusion_png, ages)
    typer.echo("\n".join(lines))


@app.command()
def compare(
    a: Annotated[Path, typer.Argument(help="First submission CSV.")],
    b: Annotated[Path, typer.Argument(help="Second submission CSV.")],
):
    """Print how many answers of two submissions differ, by class and by task."""
    from .evaluate import compare_files

    lines = compare_files(a, b)
    typer.echo("\n".join(lines))


@app.command()
def audit(
    data_dir: Annotated[Path, typer.Argument(help="Dataset folder the CV runs were trained on.")],
    mask: Annotated[Optional[Path], typer.Option(help="Mask CV folder (maskcls cv mask) or its oof.csv.")] = None,
    gender: Annotated[Optional[Path], typer.Option(help="Gender CV folder or its oof.csv.")] = None,
    age: Annotated[Optional[Path], typer.Option(help="Age CV folder or its oof.csv.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder for audit.csv, audit_sheet.png, fixes_suggested.yaml "
                                                     "(default: <project>/audit).")] = None,
    top: Annotated[int, typer.Option(min=0, help="Suspects on the contact sheet.")] = 24,
):
    """Rank likely label errors per person (gender flips, incorrect/normal swaps, age, mask) from out-of-fold
    probabilities with cleanlab; suggest label fixes for review. Never edits the data."""
    from .audit import run_audit

    result = run_audit(data_dir, {"mask": mask, "gender": gender, "age": age}, out, top)
    typer.echo("\n".join(result.format()))


# --- detect, export ---------------------------------------------------------------------------------

# options shared by detect and serve
FaceDetector = Annotated[DetectorName, typer.Option(help="What finds the faces: RetinaFace (the bundled models' "
                                                         "crops), or MTCNN.")]
MinProb = Annotated[Optional[float], typer.Option(
    min=0, max=1, help="Detector score a face needs for a row, either detector (default: 0.5 RetinaFace, 0.9 MTCNN; "
                       "lower finds more masked faces and more false boxes).")]
# MTCNN's window is 12 pixels: a smaller face would have it upsample every photo (12 / min_face)x
MinFace = Annotated[int, typer.Option(min=12, help="Smallest face kept, in pixels of the copy the detector sees (its "
                                                   "box's shorter side), either detector; MTCNN looks for none smaller.")]
MaxSide = Annotated[int, typer.Option(min=0, help="The detector looks at a copy of each photo shrunk to this longer "
                                                  "side (0: full size); faces are cut from the original.")]
SecondPass = Annotated[bool, typer.Option(help="MTCNN only (ignored with RetinaFace): also run its looser pass, which "
                                               "finds most masked faces the first misses (boxes repeating a found face "
                                               "are dropped).")]
FaceTTA = Annotated[bool, typer.Option(help="Average the original, flipped and config `tta` views of each face.")]
RuntimeOption = Annotated[RuntimeName, typer.Option(help="torch, or onnx: each run's <which>.onnx (maskcls export onnx).")]


def _detect_settings(detector: DetectorName, min_prob: float | None, min_face: int, max_side: int, second_pass: bool,
                     tta: bool, runtime: RuntimeName, device: str):
    from .detect import DetectSettings

    passes = DetectSettings.passes if second_pass else DetectSettings.passes[:1]
    return DetectSettings(detector=detector.value, min_prob=min_prob, passes=passes, min_face_size=min_face,
                          max_side=max_side, tta=tta, runtime=runtime.value, device=device)


@app.command()
def detect(
    photos: Annotated[List[Path], typer.Argument(help="Photos, or folders searched for image files.")],
    mask: MaskRuns = None,
    age: AgeRuns = None,
    gender: GenderRuns = None,
    out: Annotated[Path, typer.Option(help="One row per face: CSV (JSON note beside it), or one JSON file if *.json.")] = Path("detections.csv"),
    annotate: Annotated[Optional[Path], typer.Option(help="Folder to write each photo into with its boxes and labels drawn.")] = None,
    detector: FaceDetector = DetectorName.retinaface,
    min_prob: MinProb = None,
    min_face: MinFace = 20,
    max_side: MaxSide = 1600,
    second_pass: SecondPass = True,
    tta: FaceTTA = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="Print the summary line only, not a line per face.")] = False,
    runtime: RuntimeOption = RuntimeName.torch,
    project: ProjectDir = None,
    bundled: Bundled = False,
    which: WhichCheckpoint = Checkpoint.best,
    device: DeviceName = "auto",
):
    """Find every face in each photo (RetinaFace, or MTCNN), classify mask, gender and age band; one row per face.

    Several runs of one task are averaged (soft vote). Each face is cut out as the training crops were (the box
    grown by the run's crop_margin, squared if crop_square), even for runs trained with crop: none or center: a
    whole group photo is never fed to a classifier.
    """
    from .bundle import bundle_version
    from .detect import face_line, run_detect
    from .io import check_writable

    check_writable(out)
    if annotate is not None:  # checked now: a folder found unwritable after the first photos loses them
        check_writable(annotate, folder=True)
    settings = _detect_settings(detector, min_prob, min_face, max_side, second_pass, tta, runtime, device)
    runs = _specialist_runs(mask, age, gender, project, which.value, bundled)
    result, path = run_detect(photos, runs, out, settings, which.value, annotate)
    for message in result.unreadable:
        typer.echo(f"warning: skipped {message}", err=True)
    for row in result.rows if not quiet else []:
        typer.echo(face_line(row) if row["status"] == "face" else f"{row['file']}: no face found")
    version = bundle_version(r for rs in runs.values() for r in rs)
    typer.echo(f"{result.photos} photo(s), {result.faces} face(s), {len(result.no_face)} without a face, "
               f"{len(result.unreadable)} unreadable -> {path}" + (f" (maskcls bundle {version})" if version else ""))
    if annotate is not None:
        typer.echo(f"annotated {len(result.annotated)} photo(s) into {annotate}")


@app.command()
def serve(
    mask: MaskRuns = None,
    age: AgeRuns = None,
    gender: GenderRuns = None,
    host: Annotated[str, typer.Option(help="Address to listen on: loopback by default; 0.0.0.0 opens it to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free one).")] = 8000,
    max_upload_mb: Annotated[float, typer.Option(min=0, help="Largest request body accepted, in MB (above 0).")] = 20.0,
    max_files: Annotated[int, typer.Option(min=1, help="Most photos in one request.")] = 16,
    max_megapixels: Annotated[float, typer.Option(min=0, help="Largest photo accepted, in megapixels (read from its header; above 0).")] = 40.0,
    max_request_megapixels: Annotated[float, typer.Option(min=0, help="Most megapixels in one request, as decoded (a JPEG over --max-side decodes smaller; above 0).")] = 100.0,
    detector: FaceDetector = DetectorName.retinaface,
    min_prob: MinProb = None,
    min_face: MinFace = 20,
    max_side: MaxSide = 1600,
    second_pass: SecondPass = True,
    tta: FaceTTA = False,
    runtime: RuntimeOption = RuntimeName.torch,
    project: ProjectDir = None,
    bundled: Bundled = False,
    which: WhichCheckpoint = Checkpoint.best,
    device: DeviceName = "auto",
):
    """Serve `maskcls detect` over HTTP: POST /v1/detect, GET /v1/models, GET /healthz, a web page at /, docs at /docs.

    The models load once, at start. Stops cleanly on Ctrl-C or SIGTERM.
    """
    from .detect import FaceChecker, load_specialists

    try:
        from .serve import ServeLimits, is_loopback, listen, serve as run_server
    except ImportError as err:
        fail(f"maskcls serve needs {err.name}: pip install 'maskcls[serve]'")
    os.environ.setdefault("MASKCLS_NO_PROGRESS", "1")  # a progress bar per request would flood the log
    settings = _detect_settings(detector, min_prob, min_face, max_side, second_pass, tta, runtime, device)
    limits = ServeLimits(max_upload_mb=max_upload_mb, max_files=max_files, max_megapixels=max_megapixels,
                         max_request_megapixels=max_request_megapixels)
    runs = _specialist_runs(mask, age, gender, project, which.value, bundled)
    sock = listen(host, port)  # a busy port fails now, before the models load
    if not is_loopback(host):
        typer.echo(f"warning: --host {host}: the API has no authentication and is open to the network", err=True)
    checker = FaceChecker.create(load_specialists(runs, which.value, settings.runtime), settings)
    run_server(checker, limits, sock, announce=typer.echo)


@export_app.command("onnx")
def export_onnx(
    mask: MaskRuns = None,
    age: AgeRuns = None,
    gender: GenderRuns = None,
    joint: JointRuns = None,
    check_images: Annotated[Optional[Path], typer.Option(help="Real images for the parity check (default: each run's <data_dir>/eval/images).")] = None,
    project: ProjectDir = None,
    bundled: Bundled = False,
    which: WhichCheckpoint = Checkpoint.best,
):
    """Write <run>/<which>.onnx per run (logits, dynamic batch), checked against PyTorch with onnxruntime."""
    from .export import PARITY_ATOL, export_runs
    from .infer import onnx_path
    from .io import check_writable
    from .runs import expand_runs

    runs = expand_runs(joint) if joint else [r for rs in _specialist_runs(mask, age, gender, project,
                                                                            which.value, bundled).values() for r in rs]
    for run in runs:
        check_writable(onnx_path(run, which.value))
    results = export_runs(runs, which.value, check_images)
    typer.echo("\n".join(result.format() for result in results))
    typer.echo(f"parity: every probability within {PARITY_ATOL:g} of PyTorch's")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
