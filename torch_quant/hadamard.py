"""The block Hadamard rotation of activations (``hadamard_block`` of
``dynamic_quantized_linear`` and ``QuantLinear``; docs/semantics.md): the
rotation of the rows in the exact order the kernels follow, the matrix, the
weight that undoes it, and the block checks. One definition, used by the
layer, conversion, calibration and the tests' reference alike.
"""

from __future__ import annotations

import torch
from torch import Tensor


def hadamard_rows(x: Tensor, block: int) -> Tensor:
    """Each run of ``block`` values along the last dim times the (unnormalised,
    Sylvester-order) Hadamard matrix, by butterfly stages h = 1, 2, ...,
    block / 2: pairs (j, j + h) inside each run of 2h become (a + c, a - c),
    each rounded to x's dtype. The order the kernels follow."""
    K = x.shape[-1]
    if x.numel() == 0:
        return x
    v = x.reshape(-1, K)
    h = 1
    while h < block:
        pairs = v.reshape(v.shape[0], K // (2 * h), 2, h)
        a, c = pairs[:, :, 0], pairs[:, :, 1]
        v = torch.stack([a + c, a - c], 2).reshape(-1, K)
        h *= 2
    return v.reshape(x.shape)


def hadamard_matrix(n: int) -> Tensor:
    """The n x n Hadamard matrix of +-1 entries in Sylvester order (float64)."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def check_hadamard_block(where: str, block: object, in_features: int) -> None:
    """hadamard_block: 0, or a power of two >= 2 dividing in_features."""
    if isinstance(block, bool) or not isinstance(block, int):
        raise TypeError(f"{where}: hadamard_block must be an int, got {type(block).__name__}")
    if block == 0:
        return
    if block < 2 or block & (block - 1) or in_features % block:
        raise ValueError(f"{where}: hadamard_block must be 0 or a power of two >= 2 that "
                         f"divides in_features = {in_features}, got {block}")


def rotated_weight(w: Tensor, block: int) -> Tensor:
    """``W H / block`` run by run along the input dim (computed in float64):
    the weight that, fed rows rotated by ``hadamard_rows``, gives
    W's product."""
    n, k = w.shape
    h = hadamard_matrix(block).to(w.device)
    return ((w.double().reshape(n, k // block, block) @ h) / block).reshape(n, k).to(w.dtype)


def largest_hadamard_block(in_features: int, cap: int = 2048) -> int:
    """The largest power of two <= cap dividing in_features (0 when that is 1)."""
    b = min(in_features & -in_features, cap) if in_features > 0 else 0
    return b if b >= 2 else 0
