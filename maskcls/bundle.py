"""The bundled specialists: one run per task shipped inside the package (``maskcls/weights/``), so that detect,
serve, predict, submit, export and the Python API answer right after install, and which runs answer a command.

The bundle folder holds ``manifest.json`` (``version`` as ``YYYY.MM.DD``, ``files``: the sha256 of every file by
its path relative to the folder, ``tasks``), one ordinary run or ensemble folder per task (``mask/best.pt`` and
``mask/config.yaml``, or ``gender/member0/...``) and ``MODEL_CARD.md``. A bundled checkpoint holds only what
inference reads, its weights packed (maskcls.quantize: float16 or int8); loading expands them to float32. :func:`load_bundle` checks every
file's sha256 before a weight is used. ``MASKCLS_BUNDLE_DIR`` points the code at another bundle folder (tests,
a measurement bundle). What is made from the bundle (ONNX exports, prediction CSVs) cannot be written into an
installed package: it goes to ``$XDG_CACHE_HOME/maskcls/bundle-<version>/<task>/`` (``~/.cache`` without it).

Which runs answer (:func:`resolve_runs`): the runs named for a task win; else the newest run in
``<project>/<task>`` when a project is named; else the newest in ``runs/<task>``, and the bundle when there is
none. ``bundled`` takes the bundle for every task not named, whatever ``runs/`` holds.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .config import Config
from .data.crop import user_cache_dir
from .errors import CheckpointError, DataError, WeightsError
from .io import atomic_path, atomic_write_text
from .runs import checkpoint_time, expand_runs
from .tasks import SPECIALISTS

BUNDLE_ENV = "MASKCLS_BUNDLE_DIR"  # another bundle folder than the package's own
MANIFEST = "manifest.json"
CARD = "MODEL_CARD.md"
BUNDLED = "bundled"  # the word that stands for the bundle where a run folder is expected (maskcls predict)
WHICH = "best"  # the bundle holds each task's best.pt only
VERSION = re.compile(r"\d{4}\.\d{2}\.\d{2}(\.\d+)?")  # a date, and a counter for a second bundle that day
INFERENCE_KEYS = ("config", "class_names", "mean", "std", "best_f1")  # besides the weights: what load_run and serve read
DEFAULT_PROJECT = Path(Config.project)


class NoBundle(WeightsError):
    """No bundle is installed where one was looked for."""


@dataclass(frozen=True)
class Bundle:
    root: Path
    version: str
    files: dict[str, str]  # path relative to root -> sha256
    tasks: tuple[str, ...]

    def run_dir(self, task: str) -> Path:
        """The task's run folder, as ``load_run`` reads it."""
        if task not in self.tasks:
            raise WeightsError(f"the maskcls bundle {self.version} holds no {task} specialist "
                               f"(only {', '.join(self.tasks)})")
        return self.root / task

    @property
    def cache_dir(self) -> Path:
        """Where the files made from this bundle go: the user's cache, one folder per version."""
        return user_cache_dir() / f"bundle-{self.version}"


def bundle_dir() -> Path:
    """The bundle folder: ``$MASKCLS_BUNDLE_DIR``, else ``maskcls/weights/`` inside the package."""
    return Path(os.environ.get(BUNDLE_ENV) or Path(__file__).resolve().parent / "weights")


def read_manifest(root: str | Path | None = None) -> Bundle:
    """The bundle described by ``<root>/manifest.json`` (default :func:`bundle_dir`), its files not yet checked."""
    root = Path(root) if root else bundle_dir()
    path = root / MANIFEST
    if not path.is_file():
        raise NoBundle(f"no maskcls bundle installed ({path} not found)")
    try:
        manifest = json.loads(path.read_text())
        version, files, tasks = manifest["version"], dict(manifest["files"]), tuple(manifest["tasks"])
    except (ValueError, KeyError, TypeError) as err:
        raise WeightsError(f"{path}: not a maskcls bundle manifest ({type(err).__name__}: {err}); reinstall maskcls") \
            from None
    if not isinstance(version, str) or not VERSION.fullmatch(version):
        raise WeightsError(f"{path}: version {version!r} is not YYYY.MM.DD; reinstall maskcls")
    return Bundle(root, version, files, tasks)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_bundle(root: str | Path | None = None) -> Bundle:
    """The bundle at ``root`` (default :func:`bundle_dir`) once every file it lists, and each task's checkpoint and
    config, are present and match their sha256."""
    bundle = read_manifest(root)
    empty = [task for task in bundle.tasks
             if not any(name.startswith(f"{task}/") and name.endswith(f"{WHICH}.pt") for name in bundle.files)]
    if empty:
        raise WeightsError(f"maskcls bundle file {bundle.root / empty[0] / f'{WHICH}.pt'} is not in its manifest; "
                           f"reinstall maskcls")
    for name, expected in bundle.files.items():
        path = bundle.root / name
        if not path.is_file():
            raise WeightsError(f"maskcls bundle file {path} is missing; reinstall maskcls")
        if sha256_file(path) != expected:
            raise WeightsError(f"maskcls bundle file {path} is damaged (sha256 mismatch); reinstall maskcls")
    return bundle


def is_bundled(run: str | Path) -> bool:
    """Whether ``run`` (a run folder or its .pt file) is a task folder of the bundle at :func:`bundle_dir`."""
    path = Path(run).resolve()
    folder = path.parent if path.suffix == ".pt" else path
    root = bundle_dir().resolve()
    return root in folder.parents and (root / MANIFEST).is_file()


def bundle_version(runs: Iterable[str | Path]) -> str | None:
    """The bundle's version when any of ``runs`` comes from it, else None."""
    return read_manifest().version if any(is_bundled(run) for run in runs) else None


def output_dir(run_dir: str | Path) -> Path:
    """Where files made from the run in ``run_dir`` go: that folder, or for a bundled run its task's folder in the
    bundle's user cache (an installed package is no place to write)."""
    if not is_bundled(run_dir):
        return Path(run_dir)
    return read_manifest().cache_dir / Path(run_dir).resolve().relative_to(bundle_dir().resolve())


# --- which runs answer ----------------------------------------------------------------------------------

def find_newest_run(project: str | Path, task: str, which: str = "best") -> Path | None:
    """The run (or CV or ensemble folder) under ``<project>/<task>/`` whose ``<which>.pt`` was written last;
    None without one."""
    folder = Path(project) / task
    times = {d: checkpoint_time(d, which) for d in folder.iterdir()} if folder.is_dir() else {}
    runs = [d for d, time in times.items() if time is not None]
    return max(runs, key=times.get) if runs else None


def newest_run(project: str | Path, task: str, which: str = "best") -> Path:
    """:func:`find_newest_run`, or an error naming the folder."""
    found = find_newest_run(project, task, which)
    if found is None:
        raise DataError(f"{Path(project) / task}: no run with a {which}.pt; train one (maskcls train {task}) "
                              f"or pass --{task} RUN")
    return found


def resolve_runs(named: dict[str, Sequence[str | Path] | None], project: str | Path | None = None,
                 which: str = "best", bundled: bool = False,
                 tasks: Sequence[str] = SPECIALISTS) -> dict[str, list[Path]]:
    """The runs that answer each of ``tasks``: those ``named`` for it (the word ``bundled`` among them stands for
    the bundle's); else the newest run in ``<project>/<task>`` when ``project`` is given; else, with ``bundled``,
    the bundle's; else the newest in ``runs/<task>``, or the bundle's when there is none. CV and ensemble folders
    become their runs. The bundle's files are checked (sha256) whenever one of its runs answers."""
    chosen, fallback = {}, set()
    for task in tasks:
        if named.get(task):
            chosen[task] = list(named[task])
        elif project is not None:
            chosen[task] = [newest_run(project, task, which)]
        elif bundled:
            chosen[task] = [BUNDLED]
        else:
            newest = find_newest_run(DEFAULT_PROJECT, task, which)
            chosen[task] = [newest if newest is not None else BUNDLED]
            fallback |= {task} if newest is None else set()
    wanted = {task for task, runs in chosen.items() if any(str(run) == BUNDLED for run in runs)}
    if wanted or any(is_bundled(run) for runs in chosen.values() for run in runs):
        bundle = _installed_bundle(sorted(fallback & wanted, key=list(tasks).index))
        if wanted and which != WHICH:
            raise WeightsError(f"the maskcls bundle holds {WHICH}.pt only, not {which}.pt")
        chosen = {task: [bundle.run_dir(task) if str(run) == BUNDLED else run for run in runs]
                  for task, runs in chosen.items()}
    return {task: expand_runs(runs) for task, runs in chosen.items()}


def _installed_bundle(fallback: Sequence[str]) -> Bundle:
    """The checked bundle; when it is missing and ``fallback`` tasks had no run of their own, the error names the
    first and how to get one."""
    try:
        return load_bundle()
    except NoBundle as err:
        if not fallback:
            raise
        task = fallback[0]
        raise NoBundle(f"{DEFAULT_PROJECT / task}: no run with a {WHICH}.pt and {err}; train one "
                       f"(maskcls train {task}) or pass --{task} RUN") from None


# --- writing a bundle -----------------------------------------------------------------------------------

def write_bundle(runs: dict[str, str | Path | Sequence[str | Path]], out_dir: str | Path, version: str,
                 card: str | None = None, storage: str = "float16") -> Bundle:
    """Write the bundle of finished runs (``{"mask": run_dir, "gender": [run_a, run_b], ...}``, each with ``best.pt``
    and ``config.yaml``) into ``out_dir``: one run of a task as ``<task>/``, several as the members of an ensemble
    folder ``<task>/member<k>/`` (voted wherever the bundle answers); each checkpoint with only what inference reads
    and its weights packed as ``storage`` (maskcls.quantize: float16, or int8 per output channel), its config.yaml
    (``ensemble`` set to the members' count), ``card`` as MODEL_CARD.md (None: keep the card already there, if any),
    then the manifest, last. Every file is written atomically; returns the bundle, checked."""
    if not VERSION.fullmatch(version):
        raise WeightsError(f"bundle version {version!r}: expected YYYY.MM.DD (and an optional .N)")
    unknown = sorted(set(runs) - set(SPECIALISTS))
    if not runs or unknown:
        raise WeightsError(f"bundle tasks {unknown or 'none'}: expected some of {', '.join(SPECIALISTS)}")
    out_dir, tasks = Path(out_dir), [task for task in SPECIALISTS if task in runs]
    names = []
    for task in tasks:
        members = [runs[task]] if isinstance(runs[task], (str, Path)) else list(runs[task])
        if len(members) > 1 and (out_dir / task / f"{WHICH}.pt").exists():
            (out_dir / task / f"{WHICH}.pt").unlink()  # a single run there before would hide the members
        for k, run_dir in enumerate(members):
            folder = f"{task}/member{k}" if len(members) > 1 else task
            _write_member(Path(run_dir), task, out_dir / folder, len(members), storage)
            names += [f"{folder}/{WHICH}.pt", f"{folder}/config.yaml"]
    if card is not None:
        atomic_write_text(out_dir / CARD, card)
    names += [CARD] if (out_dir / CARD).is_file() else []
    manifest = {"version": version, "files": {name: sha256_file(out_dir / name) for name in names}, "tasks": tasks}
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return load_bundle(out_dir)


def _write_member(run_dir: Path, task: str, folder: Path, members: int, storage: str) -> None:
    """One run's slim, packed checkpoint and its config.yaml into ``folder``."""
    import torch
    import yaml

    from .quantize import pack_state

    source, config = run_dir / f"{WHICH}.pt", run_dir / "config.yaml"
    if not source.is_file() or not config.is_file():
        raise CheckpointError(f"{run_dir}: not a finished run (needs {WHICH}.pt and config.yaml)")
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{source}: cannot be read as a maskcls checkpoint ({type(err).__name__})") from None
    if state.get("config", {}).get("task") != task:
        raise CheckpointError(f"{source}: is a {state.get('config', {}).get('task')} run, not {task}")
    slim = {key: state[key] for key in INFERENCE_KEYS if key in state}
    if members > 1:  # the members' config counts them, as an ensemble folder's does
        slim["config"] = {**slim["config"], "ensemble": members}
    slim["model"] = pack_state(state["model"], storage)
    buffer = io.BytesIO()  # saved in memory, the archive's folder is "archive", not the temporary file's name:
    torch.save(slim, buffer)  # the same runs give the same bytes, and the same sha256
    with atomic_path(folder / f"{WHICH}.pt") as tmp:
        Path(tmp).write_bytes(buffer.getvalue())
    if members == 1:
        with atomic_path(folder / "config.yaml") as tmp:
            shutil.copyfile(config, tmp)
    else:
        values = yaml.safe_load(config.read_text()) or {}
        atomic_write_text(folder / "config.yaml", yaml.safe_dump({**values, "ensemble": members}, sort_keys=False))
