"""``PackedWeight``: an int8 weight held in the CPU kernels' packed layout
(``ops.pack_weight``) that shows itself as the plain ``[out, in]`` int8
tensor it stands for.

``QuantLinear.weight`` on CPU is one (a frozen ``nn.Parameter``), so that
``weight.shape``, ``numel()``, ``num_parameters()``, summaries and
``state_dict`` all see the logical weight while the packed tensor stays the
only copy in memory, as torchao's ``AffineQuantizedTensor`` keeps its packed
storage. The kernels are given ``.packed``. Any other use of the tensor
(``weight.float()``, ``weight[0]``, ``torch.equal``) runs on a plain copy
unpacked for that call, so a view of it (``weight[0]``, ``weight.t()``) is a
copy that writes do not reach; writes in place on the weight itself are
refused (they would land in such a copy and be lost, and the layer's
``weight_sum`` would go stale): assign the layer's weight or load a state dict
instead.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import Tensor
from torch.utils._pytree import tree_map

from . import ops

__all__ = ["PackedWeight", "as_parameter", "held_packed", "laid_out"]

aten = torch.ops.aten


class PackedWeight(Tensor):
    """The plain int8 weight ``[N, K]`` whose bytes are ``packed``
    (``ops.pack_weight(w)``, ``[N, ceil(K / 4) + 2, 4]``)."""

    packed: Tensor

    @staticmethod
    def __new__(cls, packed: Tensor, in_features: Optional[int] = None, requires_grad: bool = False):
        if in_features is None:
            # type(param)(plain_weight, requires_grad=...), as accelerate rebuilds a
            # parameter it moves: the plain int8 weight, laid out for its device
            if isinstance(packed, PackedWeight):
                return as_parameter(PackedWeight(packed.packed, packed.shape[1]))
            return as_parameter(laid_out(packed, packed.device))
        return Tensor._make_wrapper_subclass(cls, (packed.shape[0], in_features), dtype=torch.int8,
                                             device=packed.device, requires_grad=False)

    def __init__(self, packed: Tensor, in_features: Optional[int] = None,
                 requires_grad: bool = False) -> None:
        if in_features is not None:
            self.packed = packed

    @classmethod
    def pack(cls, w: Tensor) -> "PackedWeight":
        """The plain int8 weight ``w`` packed."""
        return cls(ops.pack_weight(w.detach()), w.shape[1])

    def unpack(self) -> Tensor:
        """A new plain ``[N, K]`` int8 tensor holding the weight."""
        return ops.unpack_weight(self.packed, self.shape[1])

    def __repr__(self, *, tensor_contents=None) -> str:
        return (f"PackedWeight(shape={tuple(self.shape)}, dtype=torch.int8, device={self.device}, "
                f"packed for the CPU kernels)")

    # torch.compile and torch.export see the packed tensor inside
    def __tensor_flatten__(self):
        return ["packed"], self.shape[1]

    @staticmethod
    def __tensor_unflatten__(inner, in_features, outer_size, outer_stride):
        return PackedWeight(inner["packed"], in_features)

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (aten.detach.default, aten.alias.default):  # the same bytes
            return PackedWeight(args[0].packed, args[0].shape[1])
        if func is aten.clone.default:
            return PackedWeight(args[0].packed.clone(), args[0].shape[1])
        if func is aten._to_copy.default and isinstance(args[0], PackedWeight):
            w = args[0]
            device = torch.device(kwargs.get("device") or w.device)
            if device == w.device and kwargs.get("dtype") in (None, torch.int8):
                return PackedWeight(w.packed.clone(), w.shape[1])
        for i, a in enumerate(func._schema.arguments):
            if a.alias_info is not None and a.alias_info.is_write:
                t = args[i] if i < len(args) else kwargs.get(a.name)
                if isinstance(t, PackedWeight):
                    raise RuntimeError(f"{func}: a QuantLinear's packed weight is not written in "
                                       f"place (its row sums, weight_sum, would go stale): assign "
                                       f"it (layer.weight = int8 codes or a float weight) or use "
                                       f"load_state_dict")
        return func(*tree_map(_plain, args), **tree_map(_plain, kwargs))

    def __deepcopy__(self, memo):
        out = PackedWeight(copy.deepcopy(self.packed, memo), self.shape[1])
        if getattr(self, "_is_param", False):
            out._is_param = True
        memo[id(self)] = out
        return out

    def __reduce_ex__(self, protocol):
        # pickled (torch.save of a whole model) as its packed bytes
        return (_rebuild, (self.packed, self.shape[1], self.requires_grad,
                           getattr(self, "_is_param", False)))


def _plain(t):
    return t.unpack() if isinstance(t, PackedWeight) else t


def _rebuild(packed: Tensor, in_features: int, requires_grad: bool, is_param: bool):
    w = PackedWeight(packed, in_features)
    if is_param:
        w._is_param = True
    return w


def as_parameter(w: Tensor) -> torch.nn.Parameter:
    """``w`` as a frozen Parameter. A PackedWeight is marked as one in place,
    as ``torch.nn.Parameter`` marks a tensor subclass, without its ``detach`` (a
    call through the subclass's dispatch)."""
    if isinstance(w, PackedWeight):
        w._is_param = True
        return w
    return torch.nn.Parameter(w, requires_grad=False)


def held_packed(device) -> bool:
    """Whether QuantLinear holds its weight packed on ``device`` (the CPU kernels'
    layout; the CUDA kernels read plain weights)."""
    return torch.device("cpu" if device is None else device).type == "cpu"


def laid_out(w: Tensor, device) -> Tensor:
    """A new tensor holding the plain weight ``w`` as a QuantLinear holds it
    on ``device``: a :class:`PackedWeight` on CPU, plain elsewhere."""
    with torch.inference_mode(False), torch.no_grad():
        w = w.detach()
        if held_packed(device) and not w.is_meta:
            return PackedWeight.pack(w.to(device))
        return w.to(device, copy=True)
