"""emotiw: group-video sentiment (positive / neutral / negative) at corpus scale.

The library is pure and importable without starting Ray; heavy dependencies (PyAV, torch,
fsspec) are imported inside the functions that use them so `import emotiw` stays fast.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("emotiw")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
