"""The old path of ``torch_quant.formats.compressed_tensors`` (kept so that existing
imports work): the same module object, not a copy."""

import sys

from .formats import compressed_tensors as _module

sys.modules[__name__] = _module
