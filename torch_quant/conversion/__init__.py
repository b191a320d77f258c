"""Converting a model: ``quantize_`` swaps its ``nn.Linear`` layers for
``QuantLinear`` ones, as a ``QuantConfig`` says (docs/conversion.md).

Modules, each importing only those before it: ``running`` (a model on a
calibration batch, its outputs compared), ``smoothing_groups`` (which layers
share an input, folding), ``calibration`` (observers), ``statistics``
(qparams, fake quantization, error measures), ``smoothing`` (factors, the
alpha and rotation search), ``auto`` (the per-layer mode policy), ``config``,
``convert`` (targets, checks, the swap), ``report``.
"""

from .config import QuantConfig
from .convert import quantize_, quantize_model, smooth_model
from .report import LayerReport, format_report, quantization_report

__all__ = ["QuantConfig", "quantize_", "quantize_model", "smooth_model", "LayerReport",
           "format_report", "quantization_report"]
