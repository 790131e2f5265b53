"""Fake-quant quantizers of the golden front end; the protocol is in :mod:`golden.quantizers.base`.

=====================================  ==========================  =====================
class                                  spec format                 used for
=====================================  ==========================  =====================
``PerChannelWeightQuantizer``          ``sym`` per channel (3)     weights (+ AdaRound)
``UniformQuantizer``                   ``uniform`` per tensor (4.1) activations, Q, proj input
``SymmetricQuantizer``                 ``sym`` per tensor (3)      K, V
``PerPatchOutlierQuantizer`` (POQ)     ``uniform`` per patch + 5   q/k/v and FC1 inputs
``ShiftLog2Quantizer`` (SLQ)           ``shiftlog2`` (4.3)         FC2 input (post-GELU)
``Log2Quantizer``                      ``log2`` (4.2)              post-softmax
=====================================  ==========================  =====================

``golden.quantizers.three_region`` (MPTQ-ViT OPT-m, spec 4.4) follows the same protocol, as does
``golden.quantizers.ptf`` (the LayerNorm inputs of MPTQ-ViT's "all modules" setting; fake-quant only,
no spec format).
"""
from .base import MIN_SCALE, Quantizer, QuantizerError, check_bits, round_half_up, round_ste
from .log2 import Log2Quantizer
from .per_patch_outlier import PerPatchOutlierQuantizer
from .shift_log2 import ShiftLog2Quantizer
from .uniform import SymmetricQuantizer, UniformQuantizer
from .weight import PerChannelWeightQuantizer

__all__ = ["MIN_SCALE", "Quantizer", "QuantizerError", "check_bits", "round_half_up",
           "round_ste", "Log2Quantizer", "PerPatchOutlierQuantizer", "ShiftLog2Quantizer",
           "SymmetricQuantizer", "UniformQuantizer", "PerChannelWeightQuantizer"]
