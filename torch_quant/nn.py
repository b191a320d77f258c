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
from .packed_weight import PackedWeight

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
        if smooth is not None:  # as the fused op does it: x.float() * smooth, in float32
            x = x.float() * smooth
        if self.hadamard_block:  # likewise, then the rotation (in Python here)
            x = hadamard_rows(x.float(), self.hadamard_block)
        x_q = ops.quantize(x, b["input_scale"], b["input_zero_point"], self.act_mode)
        y = ops.quantized_linear(x_q, b["input_scale"], b["input_zero_point"], w,
                                 b["weight_scale"], p["bias"], None, out_dtype=x_in.dtype)
        if x_in.requires_grad and torch.is_grad_enabled():
            # x_q is integer: x's gradient goes around quantize (straight through)
            y = _StraightThrough.apply(x_in, y, w, b["weight_scale"], smooth, self.hadamard_block)
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
        value = value.detach()
        if value.is_floating_point():
            smooth = self._buffers.get("input_smooth")
            self._quantize_weight(transformed_weight(
                value, None if smooth is None else 1.0 / smooth.to(value.device),
                self.hadamard_block))
        elif value.dtype == torch.int8:
            self._set_codes(value)
            with torch.inference_mode(False), torch.no_grad():
                self.weight_sum.copy_(self._row_sums(self._parameters["weight"]))
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
        """The int8 codes ``w_q`` (plain ``[out, in]``) as the weight, laid
        out for their device."""
        self._set_weight(self._laid_out(w_q, w_q.device))

    def _set_weight(self, w: Tensor) -> None:
        """``w`` (laid out) as the frozen weight Parameter."""
        self._parameters["weight"] = as_parameter(w)

    # The weight's in-memory layout follows its device: packed where the CPU
    # kernels read it, plain elsewhere. Files and state_dict hold it plain.

    def _relayout(self) -> None:
        w = self._parameters["weight"]
        if isinstance(w, PackedWeight) != _packs(w.device):
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
            if bias is not None:
                moved = keep_dtype(bias)
                if moved is not bias:
                    new = nn.Parameter(moved, requires_grad=bias.requires_grad)
                    if bias.grad is not None:
                        new.grad = keep_dtype(bias.grad)
                    self._parameters["bias"] = new
            w = self._parameters["weight"]
            if isinstance(w, PackedWeight):
                packed = keep_dtype(w.packed)
                if packed is not w.packed:
                    self._set_weight(PackedWeight(packed, self.in_features) if _packs(packed.device)
                                     else ops.unpack_weight(packed, self.in_features))
            else:
                moved = keep_dtype(w)
                if moved is not w:
                    self._set_weight(moved)
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
            self._set_weight(weight)

    @staticmethod
    def _laid_out(w: Tensor, device) -> Tensor:
        """A new tensor holding the plain weight ``w`` as this layer holds it
        on ``device``: a :class:`PackedWeight` on CPU, plain elsewhere."""
        with torch.inference_mode(False), torch.no_grad():
            w = w.detach()
            if _packs(device) and not w.is_meta:
                return PackedWeight.pack(w.to(device))
            return w.to(device, copy=True)

    @staticmethod
    def _row_sums(w: Tensor) -> Tensor:
        """The row sums of the weight ``w`` (plain or a PackedWeight: a packed
        weight holds them, read from its sum row without a pass over the
        weight)."""
        if not isinstance(w, PackedWeight):
            return w.detach().sum(1, dtype=torch.int32)
        # docs/semantics.md, "Packed weights": panels of 16 columns (the last
        # may be narrower), each G rows of 4 bytes per column, the sums in
        # row G - 2 as little-endian int32
        packed = w.packed
        n, g, _ = packed.shape
        flat = packed.reshape(-1)
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
        held = dict([*self._parameters.items(), *self._buffers.items()])
        for name, (shape, dtype) in shapes.items():
            if held.get(name) is None:
                continue
            t = state.get(name)
            if t is None:
                if name == "weight":
                    continue  # the layer's own, packed or plain as it holds it
                t = held[name]
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


def as_parameter(w: Tensor) -> nn.Parameter:
    """``w`` as a frozen Parameter. A PackedWeight is marked as one in place,
    as ``nn.Parameter`` marks a tensor subclass, without its ``detach`` (a
    call through the subclass's dispatch)."""
    if isinstance(w, PackedWeight):
        w._is_param = True
        return w
    return nn.Parameter(w, requires_grad=False)


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
            mine = {b: state_dict[p + b] for b in q.state_names() if p + b in state_dict}
            if mine:  # (a layer given nothing keeps its state)
                q.check_state(mine, "load_state_dict", p)


def watch_loads(model: nn.Module) -> None:
    """Registers check_model_state on ``model`` once (a visible hook of the
    model's own, in ``model._load_state_dict_pre_hooks``)."""
    hooks = getattr(model, "_load_state_dict_pre_hooks", {}).values()
    if not any(getattr(h, "hook", h) is check_model_state for h in hooks):
        model.register_load_state_dict_pre_hook(check_model_state)


class _StraightThrough(torch.autograd.Function):
    """y (a static layer's output) unchanged, and x's gradient as if x's
    quantization were the identity: ``ops.quantized_linear_grad_x``, the same
    formula as the fused op's gradient (csrc/autograd.cpp)."""

    @staticmethod
    def forward(ctx, x, y, w, w_scale, smooth, hadamard_block):
        ctx.save_for_backward(w, w_scale, smooth)
        ctx.in_features, ctx.hadamard_block, ctx.x_dtype = x.shape[-1], hadamard_block, x.dtype
        return y

    @staticmethod
    def backward(ctx, grad_y):
        w, w_scale, smooth = ctx.saved_tensors
        grad_x = ops.quantized_linear_grad_x(grad_y, w, w_scale, ctx.in_features, smooth,
                                             ctx.hadamard_block, ctx.x_dtype)
        return grad_x, grad_y, None, None, None, None
