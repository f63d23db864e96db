"""maskcls: mask, gender and age-band classification from face photos.

``from maskcls import FaceChecker`` is the Python API (maskcls.detect.FaceChecker), imported on first use so
that importing maskcls (and ``maskcls --help``) does not load torch.
"""
__version__ = "0.1.0"
__all__ = ["FaceChecker", "__version__"]


def __getattr__(name: str):
    if name == "FaceChecker":
        from .detect import FaceChecker

        return FaceChecker
    raise AttributeError(f"module 'maskcls' has no attribute {name!r}")
