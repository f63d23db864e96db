"""Atomic writes: a crash never leaves a half-written file where a good one was.

The temporary file sits beside its target as ``.<name>.<pid>-<token>.tmp<suffix>``, created with mode 0666 so
the umask decides who may read the result (``tempfile.mkstemp`` would make every output 0600). A write killed
before its cleanup (SIGKILL, out of memory, power loss) leaves that file behind: the first write into the same
folder by a later process removes it once it is stale (its process is gone, or it has not changed for
``STALE_AFTER_S``). Once per folder and process, since the crop cache writes thousands of files into one.
"""
from __future__ import annotations

import os
import re
import secrets
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError

STALE_AFTER_S = 600.0  # a live write keeps its file changing; one untouched this long was abandoned
_TEMP_NAME = re.compile(r"\.(?P<target>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp(?P<suffix>.*)")
_swept: set[Path] = set()  # folders this process has cleared of stale temporary files


def is_main_process() -> bool:
    """False in the ranks > 0 of a torchrun job: only rank 0 writes outputs."""
    return int(os.environ.get("RANK", "0")) == 0


def temp_target(candidate: str | Path) -> Path | None:
    """The file that ``candidate``, an atomic write's temporary file, was to replace; None for any other file."""
    candidate = Path(candidate)
    match = _TEMP_NAME.fullmatch(candidate.name)
    if match is None or Path(match["target"]).suffix != match["suffix"]:
        return None
    return candidate.with_name(match["target"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(folder: Path) -> None:
    """Delete the temporary files that killed writes left in ``folder`` (never a live writer's)."""
    for candidate in folder.iterdir():
        if not candidate.name.startswith(".") or temp_target(candidate) is None:
            continue
        try:
            pid = int(_TEMP_NAME.fullmatch(candidate.name)["pid"])
            if not _alive(pid) or time.time() - candidate.stat().st_mtime > STALE_AFTER_S:
                candidate.unlink()
        except OSError:  # gone already (its writer finished), or not ours to delete
            pass


def check_writable(path: str | Path, folder: bool = False) -> Path:
    """Refuse an output that could not be written, before the work that fills it: ``path`` is a file to write
    (``folder``: a folder to write into), and the nearest existing folder on its way must be writable."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise OutputError(f"{path}: is a {'file' if folder else 'folder'}; expected a {'folder' if folder else 'file'}"
                          f" to write")
    target = path if folder else path.parent
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{target}: cannot be made, {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{target}: folder is not writable" if existing == target else
                          f"{target}: cannot be made, {existing} is not writable")
    return path


def _create_temp(path: Path) -> Path:
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask applies
            return tmp
        except FileExistsError:
            continue


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(os.path.abspath(path.parent))
    if folder not in _swept:
        remove_stale_temps(folder)
        _swept.add(folder)
    tmp = _create_temp(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_csv(path: str | Path, frame, **kwargs) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, **kwargs)


def note_path(csv_path: str | Path) -> Path:
    """The JSON note beside an output CSV (predictions, detections): what made it, from which runs and data."""
    return Path(csv_path).with_suffix(".json")
