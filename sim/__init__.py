"""Bit-accurate integer simulator of the vitaccel datapath (docs/datapath.md).

``sim.reference`` is the plain numpy reference (the spec as code); ``sim.simulator`` the numba
simulator with the same results.
"""
from . import _cache_dirs  # noqa: F401  (first: numba's cache directory before any kernel is compiled)
from . import _threads  # noqa: F401  (OpenMP wait policy before numba / torch start their thread pools)
from .layer import EncoderSpec, LayerResult, LayerSpec, run_encoder_reference, run_layer_reference
from .reference import (AccumulatorOverflowError, DatapathError, OutlierCapacityError,
                        OutlierOverflowError)

__all__ = [
    "AccumulatorOverflowError", "DatapathError", "EncoderSpec", "LayerResult", "LayerSpec",
    "OutlierCapacityError", "OutlierOverflowError", "run_encoder_reference", "run_layer_reference",
    "run_layer", "run_encoder", "layer_gemm_path", "layer_paths", "gemm_path",
]


def __getattr__(name):  # the numba simulator is imported lazily (its compile cost is paid on first use)
    if name in ("run_layer", "run_encoder", "layer_gemm_path", "layer_paths"):
        from . import simulator
        return getattr(simulator, name)
    if name == "gemm_path":
        from .kernels_gemm import gemm_path
        return gemm_path
    raise AttributeError(f"module 'sim' has no attribute {name!r}")
