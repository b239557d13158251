"""Layer 0, core: the types every other layer shares, with numpy and the standard library only.

- `config`: typed configs (`MediaConfig`, `StorageConfig`, ...) and the class order;
- `errors`: error types with their readable reasons and the process exit codes;
- `logs`: stderr logging, text or JSON lines;
- `retry`: retries with backoff for transient (network, throttling) errors;
- `exports`: the lazy re-exports the package facades use.
"""

from importlib.metadata import PackageNotFoundError, version

from emotiw.core.exports import lazy

try:
    __version__ = version("emotiw")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

_all, __getattr__ = lazy(
    __name__,
    {
        "CLASS_NAMES": "config",
        "MediaConfig": "config",
        "StorageConfig": "config",
        "EmotiwError": "errors",
        "ExitCode": "errors",
    },
)
__all__ = ["__version__", *_all]
