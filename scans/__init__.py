"""scans: a reproducible pipeline for SCANS (Cao et al., AAAI 2025)."""

from scans.version import __version__

# The Python API (scans/api.py), imported on first use so that `import scans` and the CLI stay light.
_API = ("HarmScores", "ScansModel", "Vectors", "load", "wrap")


def __getattr__(name: str):
    if name in _API:
        from scans import api

        return getattr(api, name)
    raise AttributeError(f"module 'scans' has no attribute {name!r}")


__all__ = ["__version__", *_API]
