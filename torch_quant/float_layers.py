"""The float layers a QuantLinear is made from (``nn.Linear`` and Hugging
Face's ``Conv1D``), the weight it quantizes from them, and replacing a
submodule by name."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from .hadamard import rotated_weight

__all__ = ["float_weight_and_bias", "is_conv1d", "set_module", "transformed_weight"]


def is_conv1d(module: nn.Module) -> bool:
    """A Hugging Face ``transformers.pytorch_utils.Conv1D`` (GPT-2 style
    linear: ``weight`` is ``[in, out]``), recognized without importing
    transformers."""
    return (type(module).__name__ == "Conv1D" and hasattr(module, "nf")
            and isinstance(getattr(module, "weight", None), Tensor) and module.weight.dim() == 2)


def float_weight_and_bias(module: nn.Module):
    """(weight ``[out, in]``, bias or None) of an ``nn.Linear`` or ``Conv1D``."""
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    if is_conv1d(module):
        return module.weight.t(), module.bias
    raise TypeError(f"QuantLinear.from_float: expected nn.Linear or a Hugging Face Conv1D, "
                    f"got {type(module).__name__}")


def transformed_weight(w: Tensor, smooth: Optional[Tensor] = None,
                       hadamard_block: int = 0) -> Tensor:
    """The float32 weight a layer quantizes: ``w * smooth`` (each input
    channel times the factor its input is divided by) when smoothed, then
    rotated run by run (``rotated_weight``) when ``hadamard_block`` > 0. One
    definition for the layer, the conversion's statistics and the smoothing
    search."""
    w = w.detach().float()
    if smooth is not None:
        w = w * smooth
    if hadamard_block:
        w = rotated_weight(w, hadamard_block)
    return w


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted) by ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
