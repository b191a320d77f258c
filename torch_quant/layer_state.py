"""What a ``QuantLinear``'s state may hold, checked (``QuantLinear.check_state``
is built from these): its tensors' dtypes, shapes and values, and
``weight_sum`` against the weight's row sums, read from a packed weight
without a pass over it."""

from __future__ import annotations

import torch
from torch import Tensor

from .packed_weight import PackedWeight

__all__ = ["check_sums", "check_values", "row_sums"]


def row_sums(w: Tensor) -> Tensor:
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


def check_sums(sums: Tensor, weight_sum: Tensor, where: str, prefix: str) -> None:
    """ValueError unless ``weight_sum`` holds ``sums`` (a weight's row sums)."""
    if sums.is_meta or weight_sum.is_meta:
        return  # no values to check
    weight_sum = weight_sum.detach().to(sums.device)
    wrong = (sums != weight_sum).nonzero()
    if len(wrong):
        i = wrong[0, 0].item()
        raise ValueError(f"{where}: {prefix}weight_sum must hold the weight's row sums, but "
                         f"[{i}] is {weight_sum[i].item()} and row {i} of the weight sums to "
                         f"{sums[i].item()}")


def check_values(layer, state: dict, where: str, prefix: str) -> None:
    """``QuantLinear.check_state``'s checks of ``layer``'s tensors (those in
    ``state``, the layer's own where ``state`` has none) but the row sums:
    O(out + in)."""
    def fail(name, what):
        raise ValueError(f"{where}: {prefix}{name} {what}")

    n, k = layer.out_features, layer.in_features
    shapes = {"weight": ((n, k), torch.int8), "weight_scale": ((n,), torch.float32),
              "weight_sum": ((n,), torch.int32), "bias": ((n,), torch.float32),
              "input_scale": ((), torch.float32), "input_zero_point": ((), torch.int32),
              "input_smooth": ((k,), torch.float32)}
    held = dict([*layer._parameters.items(), *layer._buffers.items()])
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
            lo, hi = (0, 0) if layer.act_mode == "symmetric" else (0, 255)
            if not lo <= z <= hi:
                fail(name, f"must be in [{lo}, {hi}] for act_mode={layer.act_mode!r}, got {z}")

