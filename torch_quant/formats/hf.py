"""Hugging Face transformers integration (``pip install torch_quant[hf]``).

Importing this module registers the quantization method ``"torch_quant"``
with transformers (5.x), so that

* ``AutoModelForCausalLM.from_pretrained(float_dir,
  quantization_config=TorchQuantConfig(...))`` quantizes while loading. With
  per-token activations and no calibration each float weight is quantized as
  it is read, into layers built on the meta device: the float model is never
  whole in memory. Static activations, ``act_mode="auto"`` and smoothing need
  ``calibration_data``: the float model is then loaded and ``tq.quantize_``
  runs on it after loading.
* ``model.save_pretrained(dir)`` writes the int8 tensors and, in
  ``config.json``'s ``quantization_config``, every quantized layer's settings
  (``layers``), and a plain ``from_pretrained(dir)`` rebuilds exactly those
  ``QuantLinear`` layers on the meta device and loads their tensors into
  them, without building float weights.

``import torch_quant.hf`` must run before ``from_pretrained`` of such a
checkpoint: transformers does not know the method otherwise, warns "Unknown
quantization type" and loads the int8 weights into float layers.

A model quantized with ``tq.quantize_`` outside ``from_pretrained`` is made
saveable with :func:`mark_quantized`."""

from __future__ import annotations

import re
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

try:
    from transformers.core_model_loading import ConversionOps
    from transformers.quantizers.auto import (AUTO_QUANTIZATION_CONFIG_MAPPING,
                                              AUTO_QUANTIZER_MAPPING,
                                              register_quantization_config, register_quantizer)
    from transformers.quantizers.base import HfQuantizer, get_keys_to_not_convert
    from transformers.quantizers.quantizers_utils import get_module_from_name
    from transformers.utils.quantization_config import QuantizationConfigMixin
except ImportError as e:  # transformers missing, or older than 5
    raise ImportError("torch_quant.hf needs transformers >= 5 (pip install 'torch_quant[hf]'): "
                      f"{e}") from e

from .. import __version__, ops
from ..conversion.config import QuantConfig
from ..conversion.convert import _targets, quantize_
from ..float_layers import set_module
from ..nn import QuantLinear, quantized_layers
from .serialization import _check_metadata, _settings

__all__ = ["QUANT_METHOD", "TorchQuantConfig", "TorchQuantHfQuantizer", "mark_quantized"]

QUANT_METHOD = "torch_quant"


class TorchQuantConfig(QuantizationConfigMixin):
    """``quantization_config`` of torch_quant models (in ``config.json``).

    The settings are :class:`torch_quant.QuantConfig`'s, checked by it when
    this config is built: ``act_mode``, ``act_granularity``, ``smoothing``,
    ``skip``, ``percentile``. ``skip=None`` (the default) leaves what
    transformers leaves in float for every quantization method (the output
    head, tied weights); a list names exactly the modules to leave.
    ``calibration_data`` (batches of model inputs) is needed by the settings
    that need it in ``QuantConfig``; it is used once and never written out.

    ``layers`` (name -> settings) is filled when a model is quantized and
    written to ``config.json``; a checkpoint whose config has it is loaded as
    already quantized."""

    def __init__(self, act_mode: str = "symmetric", act_granularity: str = "per_token",
                 smoothing: Any = "auto", skip: Optional[Sequence[str]] = None,
                 percentile: Optional[float] = None, calibration_data=None,
                 layers: Optional[Dict[str, dict]] = None, torch_quant_version: Optional[str] = None,
                 quant_method: str = QUANT_METHOD, **kwargs) -> None:
        if kwargs:
            raise ValueError(f"TorchQuantConfig: unknown settings {sorted(kwargs)}")
        if quant_method != QUANT_METHOD:
            raise ValueError(f"TorchQuantConfig: quant_method must be {QUANT_METHOD!r}, got "
                             f"{quant_method!r}")
        self.quant_method = QUANT_METHOD
        # checked here, once (ValueError / TypeError naming the setting)
        self._config = QuantConfig(act_mode, act_granularity, smoothing, skip or (), percentile)
        self.act_mode, self.act_granularity = act_mode, act_granularity
        self.smoothing, self.percentile = self._config.smoothing, self._config.percentile
        self.skip = None if skip is None else list(self._config.skip)
        self.layers = layers
        self.torch_quant_version = torch_quant_version or __version__
        self._calibration_data = calibration_data  # not written (to_dict drops _ names)
        self.post_init()

    def post_init(self) -> None:
        if self.layers is not None:
            try:
                _check_metadata(self.layers, {})
            except ValueError as e:
                raise ValueError(f"TorchQuantConfig: layers: {e}") from None

    @property
    def quant_config(self) -> QuantConfig:
        return self._config

    def to_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def to_diff_dict(self) -> Dict[str, Any]:
        return self.to_dict()


class _QuantizeWeight(ConversionOps):
    """Quantize-on-load of one float weight into its QuantLinear's buffers:
    exactly what ``QuantLinear.from_float`` does (symmetric per channel)."""

    @torch.no_grad()
    def convert(self, input_dict, full_layer_name=None, model=None, **kwargs):
        (value,) = input_dict.values()
        value = value[0] if isinstance(value, list) else value
        prefix = full_layer_name.rpartition(".")[0]
        w = value.float()
        if not torch.isfinite(w).all():
            raise ValueError(f"torch_quant: the weight of {prefix!r} holds NaN or inf")
        scale, zp = ops.choose_qparams(w, "symmetric", axis=0)
        w_q = ops.quantize(w, scale, zp, "symmetric", axis=0)
        return {f"{prefix}.weight": w_q, f"{prefix}.weight_scale": scale,
                f"{prefix}.weight_sum": w_q.sum(1, dtype=torch.int32)}


class TorchQuantHfQuantizer(HfQuantizer):
    """The transformers quantizer of :class:`TorchQuantConfig` (see the module)."""

    requires_calibration = False
    quantization_config: TorchQuantConfig

    @property
    def quantized_element_size(self) -> float:
        return 1.0

    def _streaming(self) -> bool:
        """Quantize each weight while loading (no calibration involved)."""
        c = self.quantization_config
        return (not self.pre_quantized and c._calibration_data is None
                and not c.quant_config.needs_calibration())

    def validate_environment(self, *args, **kwargs) -> None:
        c = self.quantization_config
        if self.pre_quantized and not c.layers:
            raise ValueError("torch_quant: the checkpoint's quantization_config lists no "
                             "quantized layers ('layers')")
        needs = c.quant_config.needs_calibration()
        if not self.pre_quantized and needs and c._calibration_data is None:
            raise ValueError(f"TorchQuantConfig: {' and '.join(needs)} need calibration_data "
                             f"(batches of model inputs) to quantize while loading")
        device_map = kwargs.get("device_map")
        if isinstance(device_map, dict) and "disk" in device_map.values():
            raise ValueError("torch_quant: offloading layers to disk is not supported")

    def _skip(self, model) -> list:
        """The skip patterns: the config's, or transformers' defaults for every
        method (the output head, tied weights), and the linear layers the
        model keeps in float32 (``_keep_in_fp32_modules``: transformers takes
        each entry as a fragment of the name, e.g. T5's "wo")."""
        c = self.quantization_config
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        keep32 = list(getattr(model, "_keep_in_fp32_modules", None) or [])
        fp32 = [n for n in linear if any(k in n for k in keep32)]
        if c.skip is not None:
            return [*c.skip, *fp32]
        return [*(n for n in get_keys_to_not_convert(model) if n in set(linear)), *fp32]

    def _process_model_before_weight_loading(self, model, **kwargs):
        c = self.quantization_config
        if self.pre_quantized:  # the recorded layers, empty, on the meta device
            for name, s in c.layers.items():
                q = _empty_layer(s)
                for alias in _names_of(model, name):
                    set_module(model, alias, q)
            return model
        self._skip_patterns = self._skip(model)
        if not self._streaming():
            return model  # quantize_ runs after loading
        strict = getattr(model, "_keep_in_fp32_modules_strict", None)
        done: Dict[int, QuantLinear] = {}
        for name, layer in _targets(model, self._skip_patterns).items():
            if id(layer) not in done:
                if not isinstance(layer, nn.Linear):
                    continue  # (a GPT-2 Conv1D: quantized after loading instead)
                done[id(layer)] = _empty_layer({
                    "act_mode": c.act_mode, "act_granularity": c.act_granularity,
                    "in_features": layer.in_features, "out_features": layer.out_features,
                    "bias": layer.bias is not None})
            set_module(model, name, done[id(layer)])
            # The loader casts a weight it will quantize to the load dtype
            # first; listed here, it stays float32 (the dtype plan is built
            # from this set after this hook), so bf16 loading gives the same
            # codes as float32 quantization of a float32 checkpoint.
            if isinstance(strict, set):
                strict.add(re.escape(name) + r"\.weight$")
        return model

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        if not self._streaming():
            return False
        module, tensor_name = get_module_from_name(model, param_name)
        return isinstance(module, QuantLinear) and tensor_name == "weight"

    def get_quantize_ops(self):
        return _QuantizeWeight()

    def _process_model_after_weight_loading(self, model, **kwargs):
        c = self.quantization_config
        # calibrated settings: the whole conversion now; streaming: only what
        # could not be streamed (GPT-2's Conv1D layers)
        if not self.pre_quantized and (not self._streaming()
                                       or _targets(model, self._skip_patterns)):
            quantize_(model, QuantConfig(c.act_mode, c.act_granularity, c.smoothing,
                                         self._skip_patterns, c.percentile),
                      c._calibration_data, progress=False)
        # The loader sets each tensor on its module directly (not through
        # load_state_dict): check every layer, then pack CPU weights.
        for name, m in model.named_modules():
            if isinstance(m, QuantLinear):
                if m.weight.is_meta:
                    raise ValueError(f"torch_quant: the checkpoint has no {name}.weight")
                m.check_state({}, "torch_quant (from_pretrained)", name + ".")
                m._relayout()
        c.layers = {name: _settings(q) for name, q in quantized_layers(model)}
        c._calibration_data = None
        return model

    def get_state_dict_and_metadata(self, model):
        # save_pretrained calls this before it writes config.json: the layers
        # as they are now
        self.quantization_config.layers = {n: _settings(q) for n, q in quantized_layers(model)}
        return None, {}

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        # adapters (torch_quant.lora) train on the frozen int8 layers
        return True


def _empty_layer(s: dict) -> QuantLinear:
    return QuantLinear(s["in_features"], s["out_features"], s["bias"], act_mode=s["act_mode"],
                       act_granularity=s["act_granularity"], device=torch.device("meta"),
                       smooth=bool(s.get("smooth", False)),
                       hadamard_block=int(s.get("hadamard_block", 0)))


def _names_of(model: nn.Module, name: str) -> list:
    """Every name of the module called `name` (a module may be shared)."""
    target = model.get_submodule(name)
    return [n for n, m in model.named_modules(remove_duplicate=False) if m is target] or [name]


def mark_quantized(model: nn.Module, config: Optional[TorchQuantConfig] = None) -> nn.Module:
    """Let ``save_pretrained`` write a model quantized by ``tq.quantize_`` (or
    ``tq.load``) as a torch_quant checkpoint that ``from_pretrained`` reloads:
    records its layers in ``model.config.quantization_config``."""
    layers = {n: _settings(q) for n, q in quantized_layers(model)}
    if not layers:
        raise ValueError("torch_quant.hf.mark_quantized: the model has no QuantLinear layer")
    config = config or TorchQuantConfig()
    config.layers = layers
    model.hf_quantizer = TorchQuantHfQuantizer(config, pre_quantized=True)
    model.config.quantization_config = config
    model.is_quantized = True
    model.quantization_method = QUANT_METHOD
    model.config._is_quantized = True
    return model


# Registered once per process (transformers refuses a second registration).
if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
    register_quantization_config(QUANT_METHOD)(TorchQuantConfig)
if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
    register_quantizer(QUANT_METHOD)(TorchQuantHfQuantizer)
