"""torch_quant: INT8 quantization operators for PyTorch.

The operators live in the dispatcher as ``torch.ops.torch_quant.*`` (loading
``torch_quant._C`` registers them); this package re-exports typed wrappers.
"""

import torch  # noqa: F401  (the extension needs libtorch loaded first)

from . import _C  # noqa: F401  (registers the ops)
from . import ops
from .ops import *  # noqa: F401,F403  (the wrappers listed in ops.__all__)
from .nn import QuantLinear
from .conversion.config import QuantConfig
from .conversion.convert import quantize_, quantize_model, smooth_model
from .conversion.report import LayerReport, format_report, quantization_report
from .formats.serialization import load, save


__all__ = [*ops.__all__, "ops", "QuantLinear", "QuantConfig", "quantize_", "quantize_model",
           "smooth_model",
           "quantization_report", "format_report", "LayerReport", "save", "load"]
__version__ = "0.1.0"
