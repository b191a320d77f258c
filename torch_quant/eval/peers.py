"""The peers' int8 paths as modes of ``python -m torch_quant.eval``
(docs/evaluation.md, "Peers"): the same layers quantized by another library,
measured on the same windows as ours.

* ``peer-quantize-dynamic``: ``torch.ao.quantization.quantize_dynamic`` with its
  default qconfig, as a new user calls it: int8 weights per tensor, activations
  quantized per tensor at run time (FBGEMM / x86 kernels, 7-bit activations).
* ``peer-torchao-int8``: torchao's ``Int8DynamicActivationInt8WeightConfig``:
  int8 weights per channel, activations per token, symmetric.

A peer whose library is missing (or a torch without ``torch.ao.quantization``)
is not an error: :func:`unavailable` says why in one line and the run leaves
it out.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn

# mode name -> what the row measures (the table's footnote)
PEERS: Dict[str, str] = {
    "peer-quantize-dynamic": "torch.ao.quantization.quantize_dynamic, default qconfig "
                             "(per-tensor int8 weights and dynamic activations, FBGEMM/x86)",
    "peer-torchao-int8": "torchao Int8DynamicActivationInt8WeightConfig (per-channel int8 "
                         "weights, per-token symmetric int8 activations)",
}


@contextlib.contextmanager
def _quiet():
    """The peers' deprecation warnings and torchao's import-time log lines
    say nothing about the measurement; keep them out of the table's output."""
    logs = [logging.getLogger(n) for n in ("torch", "torch.utils._pytree", "torchao")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)


def unavailable(mode: str) -> Optional[str]:
    """None when ``mode``'s library can run here, else a one-line reason."""
    if mode == "peer-quantize-dynamic":
        try:
            with _quiet():
                from torch.ao.quantization import quantize_dynamic  # noqa: F401
        except ImportError:
            return f"{mode}: this torch ({torch.__version__}) has no torch.ao.quantization"
        if "fbgemm" not in torch.backends.quantized.supported_engines and \
                "x86" not in torch.backends.quantized.supported_engines:
            return f"{mode}: this torch has no FBGEMM / x86 quantized engine"
        return None
    if mode == "peer-torchao-int8":
        try:
            with _quiet():
                from torchao.quantization import (  # noqa: F401
                    Int8DynamicActivationInt8WeightConfig, quantize_)
        except ImportError as e:
            return f"{mode}: torchao is not installed (pip install 'torch_quant[peers]'): {e}"
        return None
    raise KeyError(mode)


def _linears(model: nn.Module, skip: Sequence[str]) -> Callable[[str], bool]:
    """Whether a module name is one of the layers to quantize: every nn.Linear
    but those ``skip`` names or globs, matched as ours matches them (a name or
    any module containing it). The peers take nn.Linear only (not GPT-2's
    Conv1D, which ours converts too)."""
    from ..conversion.convert import _matches
    names = {n for n, m in model.named_modules() if type(m) is nn.Linear}
    return lambda n: n in names and not any(_matches(n, p) for p in skip)


def convert(mode: str, model: nn.Module, skip: Sequence[str]) -> nn.Module:
    """A copy of ``model`` with its Linear layers (but ``skip``) quantized by the peer."""
    reason = unavailable(mode)
    if reason is not None:
        raise RuntimeError(reason)
    m = copy.deepcopy(model)
    chosen = _linears(m, skip)
    with _quiet():
        if mode == "peer-quantize-dynamic":
            from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic
            spec = {n: default_dynamic_qconfig for n, _ in m.named_modules() if chosen(n)}
            return quantize_dynamic(m, spec, dtype=torch.qint8, inplace=True)
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
        quantize_(m, Int8DynamicActivationInt8WeightConfig(),
                  filter_fn=lambda mod, fqn: chosen(fqn))
        return m


def quantized_layers(mode: str, model: nn.Module) -> int:
    """How many layers the peer quantized in ``model`` (a converted copy)."""
    if mode == "peer-quantize-dynamic":
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
        return sum(isinstance(m, DynamicLinear) for m in model.modules())
    # torchao keeps nn.Linear and swaps its weight for a tensor subclass
    return sum(type(m) is nn.Linear and hasattr(m.weight, "__tensor_flatten__")
               for m in model.modules())
