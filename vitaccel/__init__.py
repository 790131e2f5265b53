"""vitaccel: hardware/software co-design toolkit for low-bit post-training-quantized Vision Transformers.

The root package holds the command line (:mod:`vitaccel.cli`) and the flow orchestration
(:mod:`vitaccel.flow`). The layers below it install as sub-packages from their own top-level folders
(docs/architecture.md, "Package map"): ``sim/`` -> :mod:`vitaccel.sim`, ``hw/`` -> :mod:`vitaccel.hw`,
``golden/`` -> :mod:`vitaccel.golden`, ``tb/`` -> :mod:`vitaccel.tb`.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vitaccel")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
