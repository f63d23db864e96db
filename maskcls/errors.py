"""The errors a user can cause: a bad value, file or run, never a bug. Each message is one line naming the
file or value and what is wrong; the CLI prints any ``MaskclsError`` as that line (exit code 1), no traceback."""
from __future__ import annotations


class MaskclsError(ValueError):
    """Base of every user-facing error (a ValueError, so code catching bad values catches these too)."""


class ConfigError(MaskclsError):
    """A bad config key or value; the message names it."""


class DataError(MaskclsError):
    """Bad input data: the message names the file and what is wrong with it."""


class OutputError(MaskclsError):
    """An output that cannot be written (a folder not writable, a file in the way); names the folder."""


class CheckpointError(MaskclsError):
    """A checkpoint that is missing or unreadable; the message names the file."""


class WeightsError(MaskclsError):
    """Weights that cannot be found or do not fit; the message says which file or package."""


class ExportError(MaskclsError):
    """An export that fails or disagrees with PyTorch, or an ONNX file that is missing or stale; names the file."""
