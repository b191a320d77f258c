"""The old path of ``torch_quant.formats.hf`` (kept so that existing
imports work): the same module object, not a copy."""

import sys

from .formats import hf as _module

sys.modules[__name__] = _module
