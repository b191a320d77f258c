"""torch_quant: INT8 quantization operators for PyTorch.

The operators live in the dispatcher as ``torch.ops.torch_quant.*`` (loading
``torch_quant._C`` registers them); this package re-exports typed wrappers.
"""

import torch  # noqa: F401  (the extension needs libtorch loaded first)

from . import _C  # noqa: F401  (registers the ops)
from . import ops
from .ops import *  # noqa: F401,F403  (the wrappers listed in ops.__all__)
from .nn import QuantLinear
from .convert import quantize_model
from .report import LayerReport, format_report, quantization_report
from .serialization import load, save



def clear_weight_cache() -> None:
    """Forget what the kernels remember about tensors: call it after writing
    a weight or a quantization parameter through ``tensor.data``.

    The CPU linear kernels pack an int8 weight once, on first use with two or
    more rows, and reuse the copy while the weight tensor lives and is not
    written (its version counter tracks ``copy_``, ``load_state_dict`` and
    other in-place ops); the copies take at most
    ``TORCH_QUANT_WEIGHT_CACHE_MB`` (default 1024; 0 turns packing per weight
    off). The CUDA ops check the values of a scale or zero point tensor once
    per version in the same way, so that they do not wait for the GPU on every
    call. A write through ``.data`` is not tracked by either.
    """
    _C._clear_weight_cache()
    _C._clear_checked_values()


__all__ = [*ops.__all__, "ops", "clear_weight_cache", "QuantLinear", "quantize_model",
           "quantization_report", "format_report", "LayerReport", "save", "load"]
__version__ = "0.1.0"
