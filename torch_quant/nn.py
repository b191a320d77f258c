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

__all__ = ["QuantLinear", "ACT_MODES", "ACT_GRANULARITIES"]

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

    Buffers (all in ``state_dict``): ``weight`` int8 ``[out, in]`` (in memory
    on CPU it is held packed, ``[out, ceil(in / 4) + 2, 4]``, see
    ``ops.pack_weight``; :meth:`plain_weight` gives ``[out, in]`` anywhere),
    ``weight_scale`` float32 ``[out]``, ``weight_sum`` int32 ``[out]`` (row sums
    of ``weight``, checked on load; kept in the state dict and files for
    readers of the format, not passed to the ops, which use the packed
    weight's sums or compute them), ``bias`` float32
    ``[out]`` or None, for ``act_granularity="per_tensor"`` the 0-dim
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

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 act_mode: str = "symmetric", act_granularity: str = "per_token",
                 device: Optional[torch.device] = None, smooth: bool = False,
                 hadamard_block: int = 0) -> None:
        super().__init__()
        check_setting("QuantLinear", "act_mode", act_mode, ACT_MODES)
        check_setting("QuantLinear", "act_granularity", act_granularity, ACT_GRANULARITIES)
        check_hadamard_block("QuantLinear", hadamard_block, in_features)
        self.hadamard_block = int(hadamard_block)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.act_mode = act_mode
        self.act_granularity = act_granularity
        # Created outside inference mode even when the caller is in it, so that
        # load_state_dict can write them later outside it.
        with torch.inference_mode(False):
            w = torch.zeros(out_features, in_features, dtype=torch.int8, device=device)
            self.register_buffer("weight", ops.pack_weight(w) if _packs(w.device) else w)
            # float32 whatever the default dtype (Hugging Face builds models
            # under a bf16 / fp16 default)
            f32 = dict(dtype=torch.float32, device=device)
            self.register_buffer("weight_scale", torch.ones(out_features, **f32))
            self.register_buffer("weight_sum", torch.zeros(out_features, dtype=torch.int32,
                                                           device=device))
            self.register_buffer("bias", torch.zeros(out_features, **f32) if bias else None)
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
        q = cls(in_features, out_features, bias is not None, act_mode, act_granularity,
                device=weight.device, smooth=smooth is not None, hadamard_block=hadamard_block)
        if act_granularity == "per_tensor" and (input_scale is None or input_zero_point is None):
            raise ValueError("QuantLinear.from_float: act_granularity='per_tensor' needs "
                             "input_scale and input_zero_point (calibrate with "
                             "tq.quantize_(model, config, calibration_data))")
        with torch.inference_mode(False), torch.no_grad():
            w = weight.detach().float()
            if not torch.isfinite(w).all():
                raise ValueError("QuantLinear.from_float: the weight holds NaN or inf")
            scale, zp = ops.choose_qparams(w, "symmetric", axis=0)
            w_q = ops.quantize(w, scale, zp, "symmetric", axis=0)
            q.weight = ops.pack_weight(w_q) if ops.is_packed_weight(q.weight) else w_q
            q.weight_scale.copy_(scale)
            q.weight_sum.copy_(w_q.sum(1, dtype=torch.int32))
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
        # call: the op is called directly, and the buffers are read from
        # _buffers (nn.Module.__getattr__ costs ~0.5 us a name).
        b = self._buffers
        w = b["weight"]
        # No w_sum: a packed weight holds its sums, and with a plain one (CUDA)
        # the op would check a given w_sum with a pass over the weight, the
        # same pass that computes the sums when it needs them (CUDA: uint8
        # activations, and static ones, whose zero point it does not read).
        w_sum = None
        smooth = b.get("input_smooth")
        if self.act_granularity == "per_token":
            return _DYNAMIC_LINEAR(x, w, b["weight_scale"], b["bias"], w_sum, self.act_mode, smooth,
                                   self.hadamard_block)
        dtype = x.dtype
        if smooth is not None:  # as the fused op does it: x.float() * smooth, in float32
            x = x.float() * smooth
        if self.hadamard_block:  # likewise, then the rotation (in Python here)
            x = hadamard_rows(x.float(), self.hadamard_block)
        x_q = ops.quantize(x, b["input_scale"], b["input_zero_point"], self.act_mode)
        return ops.quantized_linear(x_q, b["input_scale"], b["input_zero_point"], w,
                                    b["weight_scale"], b["bias"], w_sum, out_dtype=dtype)

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
        """The int8 weight codes as ``[out, in]`` (a new tensor when held packed)."""
        if ops.is_packed_weight(self.weight):
            return ops.unpack_weight(self.weight, self.in_features)
        return self.weight

    def dequantized_weight(self) -> Tensor:
        """The float32 weight these codes stand for, ``[out, in]``."""
        return self.plain_weight().float() * self.weight_scale[:, None]

    # The weight's in-memory layout follows its device: packed where the CPU
    # kernels read it, plain elsewhere. Files and state_dict hold it plain.

    def _relayout(self) -> None:
        w = self.weight
        if ops.is_packed_weight(w) != _packs(w.device):
            with torch.inference_mode(False), torch.no_grad():
                self.weight = (ops.pack_weight(w) if _packs(w.device)
                               else ops.unpack_weight(w, self.in_features))

    def _apply(self, fn, recurse=True):
        # Buffers follow .to(device) / .cuda() / .cpu(), never a dtype change
        # (model.half(), model.to(torch.bfloat16)): the scales, sums and bias
        # stay float32 / int32 as the format defines them; only the input and
        # output follow the input's dtype. A buffer whose dtype fn changes is
        # moved from its original instead.
        before = {k: t for k, t in self._buffers.items() if t is not None}

        def keep_dtype(t):
            out = fn(t)
            for orig in before.values():
                if orig is t and out.dtype != t.dtype:
                    return t.to(out.device)
            return out
        super()._apply(keep_dtype, recurse)
        self._relayout()
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if ops.is_packed_weight(self.weight):
            destination[prefix + "weight"] = self.plain_weight()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        mine = {name: state_dict[prefix + name] for name in self._buffers
                if prefix + name in state_dict}
        if not mine:  # nothing of this layer's: torch reports what is missing
            return super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                                 missing_keys, unexpected_keys, error_msgs)
        # Every value checked before anything changes (ValueError naming the
        # key). The new weight is laid out first: packing it is the one pass
        # over it, and gives the row sums that weight_sum is checked against.
        where = "QuantLinear.load_state_dict"
        self._check_values(mine, where, prefix)
        assign = bool(local_metadata.get("assign_to_params_buffers", False))
        weight = mine.get("weight")
        if weight is not None:
            weight = self._laid_out(weight, weight.device if assign else self.weight.device)
        self._check_sums(self._row_sums(weight if weight is not None else self.weight),
                         mine.get("weight_sum", self.weight_sum), where, prefix)
        key = prefix + "weight"
        super()._load_from_state_dict({k: v for k, v in state_dict.items() if k != key}, prefix,
                                      local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if weight is not None:  # loaded here, in its layout
            if key in missing_keys:
                missing_keys.remove(key)
            self.weight = weight

    @staticmethod
    def _laid_out(w: Tensor, device) -> Tensor:
        """A new tensor holding the plain weight ``w`` as this layer holds it
        on ``device`` (packed on CPU, plain elsewhere)."""
        with torch.inference_mode(False), torch.no_grad():
            w = w.detach()
            if _packs(device) and not w.is_meta:
                return ops.pack_weight(w.to(device))
            return w.to(device, copy=True)

    @staticmethod
    def _row_sums(w: Tensor) -> Tensor:
        """The row sums of the weight ``w`` (plain or packed: a packed weight
        holds them, read from its sum row without a pass over the weight)."""
        if not ops.is_packed_weight(w):
            return w.sum(1, dtype=torch.int32)
        # docs/semantics.md, "Packed weights": panels of 16 columns (the last
        # may be narrower), each G rows of 4 bytes per column, the sums in
        # row G - 2 as little-endian int32
        n, g, _ = w.shape
        flat = w.reshape(-1)
        full = n // 16
        parts = [flat[:full * 64 * g].view(full, g, 16, 4)[:, g - 2]]
        if n % 16:
            parts.append(flat[full * 64 * g:].view(1, g, n % 16, 4)[:, g - 2])
        return torch.cat([p.reshape(-1, 4) for p in parts]).view(torch.int32).reshape(n)

    def check_state(self, state: dict, where: str, prefix: str = "") -> None:
        """ValueError naming the key unless ``state`` (this layer's tensors by
        buffer name, as ``state_dict`` holds them; a missing one is taken from
        the layer) is one this layer can hold: the dtypes and shapes of its
        buffers, the weight plain ``[out, in]``, every scale and smoothing
        factor finite and > 0 with a finite reciprocal, ``weight_sum`` the
        weight's row sums, a finite bias, and the input zero point that of
        ``act_mode`` (0 symmetric, [0, 255] asymmetric). Reads only; the row
        sums of a weight in ``state`` take one pass over it."""
        self._check_values(state, where, prefix)
        self._check_sums(self._row_sums(state.get("weight", self.weight)),
                         state.get("weight_sum", self.weight_sum), where, prefix)

    def _check_sums(self, sums: Tensor, weight_sum: Tensor, where: str, prefix: str) -> None:
        if sums.is_meta or weight_sum.is_meta:
            return  # no values to check
        weight_sum = weight_sum.detach().to(sums.device)
        wrong = (sums != weight_sum).nonzero()
        if len(wrong):
            i = wrong[0, 0].item()
            raise ValueError(f"{where}: {prefix}weight_sum must hold the weight's row sums, but "
                             f"[{i}] is {weight_sum[i].item()} and row {i} of the weight sums to "
                             f"{sums[i].item()}")

    def _check_values(self, state: dict, where: str, prefix: str) -> None:
        """check_state's checks but the row sums: O(out + in)."""
        def fail(name, what):
            raise ValueError(f"{where}: {prefix}{name} {what}")

        n, k = self.out_features, self.in_features
        shapes = {"weight": ((n, k), torch.int8), "weight_scale": ((n,), torch.float32),
                  "weight_sum": ((n,), torch.int32), "bias": ((n,), torch.float32),
                  "input_scale": ((), torch.float32), "input_zero_point": ((), torch.int32),
                  "input_smooth": ((k,), torch.float32)}
        for name, (shape, dtype) in shapes.items():
            if self._buffers.get(name) is None:
                continue
            t = state.get(name)
            if t is None:
                if name == "weight":
                    continue  # the layer's own, packed or plain as it holds it
                t = self._buffers[name]
            if not isinstance(t, Tensor) or tuple(t.shape) != shape or t.dtype != dtype:
                got = (f"{tuple(t.shape)} {t.dtype}" if isinstance(t, Tensor)
                       else type(t).__name__)
                fail(name, f"must be a {dtype} tensor of shape {shape}, got {got}")
            t = t.detach()
            if t.is_meta:
                continue  # no values to check
            if name in ("weight_scale", "input_scale", "input_smooth"):
                f = t.double()
                bad = ~(torch.isfinite(f) & (f > 0) & torch.isfinite(1.0 / t))
                if bad.any():
                    i = bad.flatten().nonzero()[0, 0].item()
                    fail(name, f"must be finite and > 0 (with a finite reciprocal), got "
                               f"{t.flatten()[i].item()}" + (f" at index {i}" if t.dim() else ""))
            elif name == "bias" and not torch.isfinite(t).all():
                fail(name, "must be finite, got NaN or inf")
            elif name == "input_zero_point":
                z = t.item()
                lo, hi = (0, 0) if self.act_mode == "symmetric" else (0, 255)
                if not lo <= z <= hi:
                    fail(name, f"must be in [{lo}, {hi}] for act_mode={self.act_mode!r}, got {z}")

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, weight=int8 symmetric per-channel, "
                f"act_mode={self.act_mode}, act_granularity={self.act_granularity}"
                + (", smooth=True" if "input_smooth" in self._buffers else "")
                + (f", hadamard_block={self.hadamard_block}" if self.hadamard_block else ""))


def _packs(device) -> bool:
    """Whether QuantLinear holds its weight packed on ``device`` (the CPU kernels'
    layout; the CUDA kernels read plain weights)."""
    return torch.device("cpu" if device is None else device).type == "cpu"


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
            mine = {b: state_dict[p + b] for b in q._buffers if p + b in state_dict}
            if mine:  # (a layer given nothing keeps its state)
                q.check_state(mine, "load_state_dict", p)


def watch_loads(model: nn.Module) -> None:
    """Registers check_model_state on ``model`` once (a visible hook of the
    model's own, in ``model._load_state_dict_pre_hooks``)."""
    hooks = getattr(model, "_load_state_dict_pre_hooks", {}).values()
    if not any(getattr(h, "hook", h) is check_model_state for h in hooks):
        model.register_load_state_dict_pre_hook(check_model_state)
