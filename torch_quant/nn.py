"""``QuantLinear``: a linear layer with int8 weights and quantized activations
(docs/semantics.md, "Python API").

Weights are quantized once, symmetrically per output channel (int8, zero point
0, ``scale[n] = max_k |w[n, k]| / 127``), and held once: on CPU packed for the
kernels (``ops.pack_weight``), elsewhere plain; ``state_dict`` and every file
keep the plain ``[out, in]`` layout. Activations are quantized on every
call, either per token inside the fused op (``act_granularity="per_token"``,
dynamic) or with one scale and zero point fixed by calibration
(``"per_tensor"``, static), in ``act_mode`` "symmetric" (int8) or
"asymmetric" (uint8). The integer product is exact (int32); see the ops.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import List, Mapping, Optional

import torch
from torch import Tensor, nn

from . import ops
from .float_layers import float_weight_and_bias, transformed_weight
from .hadamard import check_hadamard_block, hadamard_rows
from .layer_state import check_sums, check_values, row_sums
from .packed_weight import PackedWeight, as_parameter, held_packed, laid_out
from .straight_through import StraightThrough

__all__ = ["QuantLinear", "PackedWeight", "ACT_MODES", "ACT_GRANULARITIES"]

ACT_MODES = ("symmetric", "asymmetric")
ACT_GRANULARITIES = ("per_token", "per_tensor")
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_DYNAMIC_LINEAR = torch.ops.torch_quant.dynamic_quantized_linear.default


def check_setting(where: str, name: str, value: object, allowed) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{where}: {name} must be one of {', '.join(map(repr, allowed))}, "
                         f"got {value!r}")


class QuantLinear(nn.Module):
    """``y = x W^T + b`` with W int8 (symmetric, per output channel) and x
    quantized per token or per tensor, symmetric or asymmetric.

    Parameters, as ``nn.Linear``'s: ``weight`` int8 ``[out, in]``, frozen
    (``requires_grad=False``; on CPU a :class:`PackedWeight` whose memory is
    the packed ``[out, ceil(in / 4) + 2, 4]`` layout of ``ops.pack_weight``,
    the only copy), and ``bias`` float32 ``[out]`` or None. Buffers (all in
    ``state_dict``, with the weight plain ``[out, in]``):
    ``weight_scale`` float32 ``[out]``, ``weight_sum`` int32 ``[out]`` (row sums
    of ``weight``, checked on load; kept in the state dict and files for
    readers of the format, not passed to the ops, which use the packed
    weight's sums or compute them), for ``act_granularity="per_tensor"`` the 0-dim
    ``input_scale`` (float32) and ``input_zero_point`` (int32), and with
    ``smooth=True`` ``input_smooth`` float32 ``[in]``: the input is multiplied
    by it before it is quantized (activation smoothing whose factors could
    not be folded into an earlier layer; the weight's columns hold the
    inverse factors). ``hadamard_block`` b > 0: each run of b input channels
    is multiplied by the b x b Hadamard matrix before it is quantized (inside
    the fused op per token; by tensor operations before ``quantize`` per
    tensor, where ``input_scale`` is the rotated input's), which spreads a few
    outlier channels over the run; the weight holds ``W H / b`` per run, so
    the product is unchanged up to rounding.

    Input: ``[*, in_features]`` in float32, float16 or bfloat16; the output has
    the input's dtype. Build one with :meth:`from_float`.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 act_mode: str = "symmetric", act_granularity: str = "per_token",
                 smooth: bool = False, hadamard_block: int = 0,
                 device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
                 ) -> None:
        """An empty layer (weight 0, scales 1) to load a state dict into;
        :meth:`from_float` makes one from a float layer. ``device`` as
        ``nn.Linear``'s; ``dtype`` is accepted as ``nn.Linear``'s (a float
        dtype) and changes nothing: the weight is int8, its scales and the
        bias float32 whatever the model's dtype, and the layer computes in
        its input's dtype."""
        super().__init__()
        check_setting("QuantLinear", "act_mode", act_mode, ACT_MODES)
        check_setting("QuantLinear", "act_granularity", act_granularity, ACT_GRANULARITIES)
        check_hadamard_block("QuantLinear", hadamard_block, in_features)
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"QuantLinear: dtype must be a float dtype (as nn.Linear's), got "
                            f"{dtype!r}")
        self.hadamard_block = int(hadamard_block)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.act_mode = act_mode
        self.act_granularity = act_granularity
        # Created outside inference mode even when the caller is in it, so that
        # load_state_dict can write them later outside it.
        with torch.inference_mode(False):
            w = torch.zeros(out_features, in_features, dtype=torch.int8, device=device)
            self._set_codes(w)
            # float32 whatever the default dtype (Hugging Face builds models
            # under a bf16 / fp16 default)
            f32 = dict(dtype=torch.float32, device=device)
            self.register_parameter("bias", nn.Parameter(torch.zeros(out_features, **f32))
                                    if bias else None)
            self.register_buffer("weight_scale", torch.ones(out_features, **f32))
            self.register_buffer("weight_sum", torch.zeros(out_features, dtype=torch.int32,
                                                           device=device))
            if act_granularity == "per_tensor":
                self.register_buffer("input_scale", torch.ones((), **f32))
                self.register_buffer("input_zero_point",
                                     torch.zeros((), dtype=torch.int32, device=device))
            if smooth:
                self.register_buffer("input_smooth", torch.ones(in_features, **f32))
        self._stats: dict = {}  # see stats

    @classmethod
    def from_float(cls, linear: nn.Module, act_mode: str = "symmetric",
                   act_granularity: str = "per_token", input_scale: Optional[Tensor] = None,
                   input_zero_point: Optional[Tensor] = None,
                   smooth: Optional[Tensor] = None, hadamard_block: int = 0) -> "QuantLinear":
        """Quantize an ``nn.Linear`` (or a Hugging Face ``Conv1D``, whose weight
        is stored transposed). ``per_tensor`` needs ``input_scale`` and
        ``input_zero_point`` (from calibration, see ``tq.quantize_``),
        which apply to the smoothed input when ``smooth`` is given.

        ``smooth`` (``[in]``, finite, > 0): smoothing factors s. The layer then
        computes ``(x / s) (W s)^T``: the weight's columns are multiplied by s
        before they are quantized and the input is multiplied by ``1 / s``
        (the ``input_smooth`` buffer) before it is.

        ``hadamard_block`` b (0 = none, else a power of two dividing ``in``): the input is rotated by the b x b Hadamard matrix H
        run by run inside the op, and the weight (after smoothing) is
        replaced by ``W H / b`` before it is quantized (in float64)."""
        weight, bias = float_weight_and_bias(linear)
        out_features, in_features = weight.shape
        check_hadamard_block("QuantLinear.from_float", hadamard_block, in_features)
        if smooth is not None:
            smooth = torch.as_tensor(smooth, dtype=torch.float32, device=weight.device)
            if smooth.shape != (in_features,) or not (torch.isfinite(smooth).all()
                                                       and (smooth > 0).all()):
                raise ValueError(f"QuantLinear.from_float: smooth must hold {in_features} "
                                 f"finite factors > 0, got shape {tuple(smooth.shape)}")
        if smooth is not None or hadamard_block:
            weight = transformed_weight(weight, smooth, hadamard_block)
        q = cls(in_features, out_features, bias is not None, act_mode=act_mode,
                act_granularity=act_granularity, device=weight.device,
                smooth=smooth is not None, hadamard_block=hadamard_block)
        if act_granularity == "per_tensor" and (input_scale is None or input_zero_point is None):
            raise ValueError("QuantLinear.from_float: act_granularity='per_tensor' needs "
                             "input_scale and input_zero_point (calibrate with "
                             "tq.quantize_(model, config, calibration_data))")
        q._quantize_weight(weight.detach(), "QuantLinear.from_float")
        with torch.inference_mode(False), torch.no_grad():
            if bias is not None:
                q.bias.copy_(bias.detach().float())
            if smooth is not None:
                q.input_smooth.copy_(1.0 / smooth)
            if act_granularity == "per_tensor":
                q.input_scale.copy_(torch.as_tensor(input_scale, dtype=torch.float32))
                q.input_zero_point.copy_(torch.as_tensor(input_zero_point, dtype=torch.int32))
        # the parameters made here, checked as load_state_dict checks them
        q.check_state({}, "QuantLinear.from_float")
        return q

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype not in _FLOATS:
            raise TypeError(f"QuantLinear: input must be float32, float16 or bfloat16, "
                            f"got {x.dtype}")
        # At decode sizes the Python around the op is a visible share of a
        # call: the op is called directly, and the tensors are read from
        # _parameters / _buffers (nn.Module.__getattr__ costs ~0.5 us a name).
        p, b = self._parameters, self._buffers
        w = p["weight"]
        if type(w) is PackedWeight:
            w = w.packed
        # No w_sum: a packed weight holds its sums, and with a plain one (CUDA)
        # the op would check a given w_sum with a pass over the weight, the
        # same pass that computes the sums when it needs them (CUDA: uint8
        # activations, and static ones, whose zero point it does not read).
        smooth = b.get("input_smooth")
        if self.act_granularity == "per_token":
            return _DYNAMIC_LINEAR(x, w, b["weight_scale"], p["bias"], None, self.act_mode, smooth,
                                   self.hadamard_block)
        x_in = x
        with torch.no_grad():  # (x's gradient goes around these and quantize: below)
            if smooth is not None:  # as the fused op does it: x.float() * smooth, in float32
                x = x.float() * smooth
            if self.hadamard_block:  # likewise, then the rotation (in Python here)
                x = hadamard_rows(x.float(), self.hadamard_block)
            x_q = ops.quantize(x, b["input_scale"], b["input_zero_point"], self.act_mode)
        y = ops.quantized_linear(x_q, b["input_scale"], b["input_zero_point"], w,
                                 b["weight_scale"], p["bias"], None, out_dtype=x_in.dtype)
        if x_in.requires_grad and torch.is_grad_enabled():
            # x_q is integer: x's gradient goes around quantize (straight through)
            y = StraightThrough.apply(x_in, y, w, b["weight_scale"], smooth, self.hadamard_block)
        return y

    @property
    def stats(self) -> Mapping:
        """How ``tq.quantize_`` made this layer (the weight's and activations'
        SQNR, calibrated range, smoothing, auto's errors: what
        ``tq.quantization_report`` shows), read-only; empty for a layer made
        otherwise. Not saved."""
        return MappingProxyType(self._stats)

    def record_stats(self, stats: Mapping) -> None:
        """Replaces what :attr:`stats` reports (``tq.quantize_`` records each
        layer's once, complete)."""
        self._stats = dict(stats)

    def plain_weight(self) -> Tensor:
        """The int8 weight codes as a plain ``[out, in]`` tensor (a new one
        when held packed)."""
        w = self._parameters["weight"]
        return w.unpack() if isinstance(w, PackedWeight) else w.detach()

    def dequantized_weight(self) -> Tensor:
        """The float32 weight these codes stand for, ``[out, in]``."""
        return self.plain_weight().float() * self.weight_scale[:, None]

    def state_names(self) -> List[str]:
        """The names of this layer's ``state_dict`` entries."""
        return [n for n, t in [*self._parameters.items(), *self._buffers.items()] if t is not None]

    def __setattr__(self, name: str, value) -> None:
        # weight = a tensor (Hugging Face's tie_weights() assigns the input
        # embedding's float Parameter to the output head): the layer stays
        # int8 and takes the value as its weight, through its quantization.
        if name == "weight" and isinstance(value, Tensor) and "weight" in self._parameters:
            self._assign_weight(value)
        else:
            super().__setattr__(name, value)

    def _assign_weight(self, value: Tensor) -> None:
        """A float ``[out, in]`` weight is quantized as :meth:`from_float`
        quantizes one (with this layer's smoothing and rotation; the scales
        follow); int8 codes replace the codes (the row sums follow, the scales
        stay)."""
        shape = (self.out_features, self.in_features)
        if tuple(value.shape) != shape:
            raise ValueError(f"QuantLinear: weight must have shape {shape}, got "
                             f"{tuple(value.shape)}")
        # on the layer's device (the value's while the layer is still on meta,
        # as the Hugging Face loader fills it); a meta value gives meta codes
        device = self._parameters["weight"].device
        value = value.detach().to(value.device if device.type == "meta" else device)
        if value.is_meta:
            self._set_codes(torch.empty(shape, dtype=torch.int8, device="meta"))
            return
        if value.is_floating_point():
            smooth = self._buffers.get("input_smooth")
            self._quantize_weight(transformed_weight(
                value, None if smooth is None else 1.0 / smooth.to(value.device),
                self.hadamard_block))
        elif value.dtype == torch.int8:
            self._set_codes(value)
            with torch.inference_mode(False), torch.no_grad():
                self.weight_sum.copy_(row_sums(self._parameters["weight"]))
        else:
            raise TypeError(f"QuantLinear: weight must be a float or int8 tensor, got "
                            f"{value.dtype}")

    def _quantize_weight(self, w: Tensor, where: str = "QuantLinear") -> None:
        """Codes, scales and sums of the float weight ``w`` (already smoothed
        and rotated): symmetric, per output channel."""
        with torch.inference_mode(False), torch.no_grad():
            w = w.float()
            if not torch.isfinite(w).all():
                raise ValueError(f"{where}: the weight holds NaN or inf")
            scale, zp = ops.choose_qparams(w, "symmetric", axis=0)
            w_q = ops.quantize(w, scale, zp, "symmetric", axis=0)
            self._set_codes(w_q)
            self.weight_scale.copy_(scale)
            self.weight_sum.copy_(w_q.sum(1, dtype=torch.int32))

    def _set_codes(self, w_q: Tensor) -> None:
        """The int8 codes ``w_q`` (plain ``[out, in]``) as the frozen weight
        Parameter, laid out for their device."""
        self._parameters["weight"] = as_parameter(laid_out(w_q, w_q.device))

    # The weight's in-memory layout follows its device: packed where the CPU
    # kernels read it, plain elsewhere. Files and state_dict hold it plain.

    def _relayout(self) -> None:
        w = self._parameters["weight"]
        if isinstance(w, PackedWeight) != held_packed(w.device):
            self._set_codes(self.plain_weight())

    def _apply(self, fn, recurse=True):
        # The tensors follow .to(device) / .cuda() / .cpu() / share_memory(),
        # never a dtype change (model.half(), model.to(torch.bfloat16)): the
        # weight stays int8, the scales, sums and bias float32 / int32 as the
        # format defines them; only the input and output follow the input's
        # dtype. A tensor whose dtype fn changes is moved from its original
        # instead. A packed weight is given to fn as its packed tensor (no
        # dispatch through PackedWeight), and laid out again for the device
        # it lands on.
        def keep_dtype(t):
            out = fn(t)
            return t.to(out.device) if out.dtype != t.dtype else out

        with torch.no_grad():
            for name, t in self._buffers.items():
                if t is not None:
                    self._buffers[name] = keep_dtype(t)
            bias = self._parameters["bias"]
            if bias is not None:  # the same Parameter (an optimizer may hold it), new data
                moved = keep_dtype(bias)
                if moved is not bias:
                    bias.data = moved
                    if bias.grad is not None:
                        bias.grad = keep_dtype(bias.grad)
            w = self._parameters["weight"]
            inner = w.packed if isinstance(w, PackedWeight) else w
            moved = keep_dtype(inner)
            if moved is not inner:  # (then laid out for its device by _relayout)
                self._parameters["weight"] = as_parameter(
                    PackedWeight(moved, self.in_features) if inner is not w else moved)
        self._relayout()
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # (nn.Module's would detach the weight, a call through PackedWeight's
        # dispatch: its first one imports torch.distributed.tensor, ~40 MB)
        for name, t in [*self._parameters.items(), *self._buffers.items()]:
            if t is None or name in self._non_persistent_buffers_set:
                continue
            if name == "weight" and isinstance(t, PackedWeight):
                t = self.plain_weight()
            destination[prefix + name] = t if keep_vars else t.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        mine = {name: state_dict[prefix + name] for name in self.state_names()
                if prefix + name in state_dict}
        if not mine:  # nothing of this layer's: torch reports what is missing
            return super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                                 missing_keys, unexpected_keys, error_msgs)
        # Every value checked before anything changes (ValueError naming the
        # key). The new weight is laid out first: packing it is the one pass
        # over it, and gives the row sums that weight_sum is checked against.
        where = "QuantLinear.load_state_dict"
        check_values(self, mine, where, prefix)
        assign = bool(local_metadata.get("assign_to_params_buffers", False))
        weight = mine.get("weight")
        if weight is not None:
            weight = laid_out(weight, weight.device if assign else self.weight.device)
        if weight is not None or "weight_sum" in mine:
            check_sums(row_sums(weight if weight is not None else self.weight),
                       mine.get("weight_sum", self.weight_sum), where, prefix)
        key = prefix + "weight"
        super()._load_from_state_dict({k: v for k, v in state_dict.items() if k != key}, prefix,
                                      local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if weight is not None:  # loaded here, in its layout
            if key in missing_keys:
                missing_keys.remove(key)
            self._parameters["weight"] = as_parameter(weight)

    def check_state(self, state: dict, where: str, prefix: str = "") -> None:
        """ValueError naming the key unless ``state`` (this layer's tensors by
        buffer name, as ``state_dict`` holds them; a missing one is taken from
        the layer) is one this layer can hold: the dtypes and shapes of its
        buffers, the weight plain ``[out, in]``, every scale and smoothing
        factor finite and > 0 with a finite reciprocal, ``weight_sum`` the
        weight's row sums, a finite bias, and the input zero point that of
        ``act_mode`` (0 symmetric, [0, 255] asymmetric). Reads only; the row
        sums of a weight in ``state`` take one pass over it."""
        check_values(self, state, where, prefix)
        check_sums(row_sums(state.get("weight", self.weight)),
                   state.get("weight_sum", self.weight_sum), where, prefix)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, weight=int8 symmetric per-channel, "
                f"act_mode={self.act_mode}, act_granularity={self.act_granularity}"
                + (", smooth=True" if "input_smooth" in self._buffers else "")
                + (f", hadamard_block={self.hadamard_block}" if self.hadamard_block else ""))


def quantized_layers(model: nn.Module) -> List[tuple]:
    """``(name, QuantLinear)`` of every quantized layer, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)]


def check_model_state(model: nn.Module, state_dict, prefix: str, local_metadata, strict,
                      missing_keys, unexpected_keys, error_msgs) -> None:
    """A load_state_dict pre-hook of a whole model (``tq.quantize_`` and
    ``tq.load`` register it on the model they convert): every QuantLinear's
    entries are checked (``QuantLinear.check_state``) before any module
    loads, so a bad value in the last layer leaves the first one as it was."""
    for name, q in model.named_modules(prefix=prefix.rstrip(".")):
        if isinstance(q, QuantLinear):
            p = f"{name}." if name else ""
            mine = {b: state_dict[p + b] for b in q.state_names() if p + b in state_dict}
            if mine:  # (a layer given nothing keeps its state)
                q.check_state(mine, "load_state_dict", p)


def watch_loads(model: nn.Module) -> None:
    """Registers check_model_state on ``model`` once (a visible hook of the
    model's own, in ``model._load_state_dict_pre_hooks``)."""
    hooks = getattr(model, "_load_state_dict_pre_hooks", {}).values()
    if not any(getattr(h, "hook", h) is check_model_state for h in hooks):
        model.register_load_state_dict_pre_hook(check_model_state)
