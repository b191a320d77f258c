"""The straight-through gradient of ``QuantLinear``'s static (per-tensor)
layers: their input is quantized by ``quantize`` (an integer output, which
autograd cannot follow) before ``quantized_linear``, so x's gradient goes
around both, with the fused op's formula (docs/semantics.md, "Gradients")."""

from __future__ import annotations

import torch

from . import ops

__all__ = ["StraightThrough"]


class StraightThrough(torch.autograd.Function):
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
