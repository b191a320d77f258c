"""LoRA adapters on quantized layers through peft (``pip install torch_quant[peft]``).

The int8 layer stays frozen and exact; each adapter adds ``B(A(x)) * scaling``
in float, as peft's own ``lora.Linear`` does, and the gradient reaches ``x``
through the quantized layer (docs/semantics.md, "Gradients")::

    from peft import LoraConfig, get_peft_model
    from torch_quant.lora import register_lora

    config = register_lora(LoraConfig(target_modules=["q_proj", "v_proj"], r=8))
    model = get_peft_model(quantized_model, config)

peft's hook for layer types of other libraries is per config
(``LoraConfig._register_custom_module``): :func:`register_lora` adds
:class:`QuantLoraLinear` for :class:`~torch_quant.QuantLinear` to the config
given, nothing global. A saved adapter is loaded the same way:
``PeftModel.from_pretrained(model, path, config=register_lora(LoraConfig.from_pretrained(path)))``.

Merging is refused: an int8 weight cannot absorb a float delta without
re-quantizing the layer, which would change it beyond the adapter's
training. ``unload()`` gives the quantized model back without the adapters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

try:
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer
except ImportError as e:  # pragma: no cover - the [peft] extra is missing
    raise ImportError("torch_quant.lora needs peft: pip install 'torch_quant[peft]'") from e

from .nn import QuantLinear

__all__ = ["QuantLoraLinear", "register_lora"]

# initialisations that read the base layer's float weight (SVD and the like)
_WEIGHT_INITS = ("pissa", "corda", "olora", "loftq", "orthogonal", "lora_ga", "mica", "eva")


def register_lora(config: LoraConfig) -> LoraConfig:
    """``config`` with :class:`QuantLoraLinear` registered as the LoRA layer of
    :class:`~torch_quant.QuantLinear` (peft's custom-module hook); returns it."""
    if not isinstance(config, LoraConfig):
        raise TypeError(f"register_lora: config must be a peft.LoraConfig, got "
                        f"{type(config).__name__}")
    config._register_custom_module({QuantLinear: QuantLoraLinear})
    return config


class QuantLoraLinear(nn.Module, LoraLayer):
    """A :class:`~torch_quant.QuantLinear` with LoRA adapters (made by peft's
    ``get_peft_model`` once :func:`register_lora` is applied to its config).
    Plain LoRA only: variants and initialisations that read or rewrite the
    base weight (DoRA, PiSSA, LoftQ, ...) and merging are refused."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig,
                 r: int = 0, lora_alpha: int = 1, **kwargs: Any) -> None:
        init = str(getattr(config, "init_lora_weights", True)).lower()
        if any(init.startswith(w) for w in _WEIGHT_INITS):
            raise ValueError(f"torch_quant.lora: init_lora_weights={config.init_lora_weights!r} "
                             f"reads the base layer's float weight; a QuantLinear holds int8 "
                             f"codes (use True, False or 'gaussian')")
        for option in ("use_dora", "use_alora", "use_qalora"):
            if getattr(config, option, False):
                raise ValueError(f"torch_quant.lora: {option}=True is not supported on a "
                                 f"QuantLinear (it rewrites or reads the float base weight)")
        super().__init__()
        LoraLayer.__init__(self, base_layer, **kwargs)
        self.fan_in_fan_out = False
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    def _get_in_out_features(self, module: nn.Module):
        return module.in_features, module.out_features

    def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
        raise ValueError("torch_quant.lora: a LoRA adapter cannot be merged into a QuantLinear "
                         "(an int8 weight cannot absorb a float delta without re-quantizing "
                         "the layer); use unload() to drop the adapters, or keep the model "
                         "unmerged")

    def unmerge(self) -> None:
        pass  # never merged

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._check_forward_args(x, *args, **kwargs)
        adapter_names = kwargs.pop("adapter_names", None)
        if self.disable_adapters:
            return self.base_layer(x, *args, **kwargs)
        if adapter_names is not None:
            return self._mixed_batch_forward(x, *args, adapter_names=adapter_names, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        dtype = result.dtype
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            lora_a, lora_b = self.lora_A[name], self.lora_B[name]
            h = self._cast_input_dtype(x, lora_a.weight.dtype)
            result = result + lora_b(lora_a(self.lora_dropout[name](h))) * self.scaling[name]
        return result.to(dtype)

    def __repr__(self) -> str:
        return "lora." + super().__repr__()
