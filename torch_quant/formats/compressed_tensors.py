"""compressed-tensors W8A8 checkpoints (the format vLLM and llm-compressor
use for int8 models): read into ``QuantLinear`` layers, and written from them.

The scheme both sides share is torch_quant's own: format "int-quantized"
(or its alias "naive-quantized"), weights int8, symmetric, one scale per
output channel (strategy "channel", static), input activations int8 dynamic
per token (strategy "token"), symmetric or asymmetric; no output-activation
or kv-cache quantization, no sparsity or transforms. Per layer the file holds
``<layer>.weight`` (int8 ``[N, K]``), ``<layer>.weight_scale`` (``[N, 1]``)
and the float bias; dynamic activations store nothing. Anything else (4-bit,
group-wise, fp8, static or weight-only activations) is a ``ValueError``
naming the scheme. Layers with an ``input_smooth`` factor or a Hadamard
rotation, and static (per-tensor) activations, have no form in the format:
writing them is a ``ValueError`` naming the layer.

Asymmetric activations: vLLM computes int8 codes ``q - 128`` with zero point
``z - 128`` where we compute uint8 ``q`` with ``z``: the same values.

The ``compressed-tensors`` package is not needed; the tests check what is
written with its own config classes and compressor."""

from __future__ import annotations

import json
import os
import re
from typing import Dict, Optional, Union

import torch
from torch import Tensor, nn

from .. import __version__
from ..float_layers import float_weight_and_bias, is_conv1d
from ..nn import QuantLinear, quantized_layers
from .serialization import _held_tensors, _ident, load_layers

__all__ = ["save_compressed_tensors", "load_compressed_tensors", "compressed_tensors_config"]

PathLike = Union[str, os.PathLike]
QUANT_METHOD = "compressed-tensors"
FORMATS = ("int-quantized", "naive-quantized")
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def _args(symmetric: bool, strategy: str, dynamic: bool) -> dict:
    return {"num_bits": 8, "type": "int", "symmetric": symmetric, "strategy": strategy,
            "dynamic": dynamic, "group_size": None}


def compressed_tensors_config(model: nn.Module) -> dict:
    """The ``quantization_config`` that describes ``model``'s quantized layers
    (one group per activation mode; "Linear" targets when every linear layer
    of one mode is quantized, else the layers by name)."""
    layers = dict(quantized_layers(model))
    if not layers:
        raise ValueError("torch_quant.compressed_tensors: the model has no QuantLinear layer")
    for name, q in layers.items():
        if q.act_granularity != "per_token":
            raise ValueError(f"torch_quant.compressed_tensors: layer {name!r} has static "
                             f"(per-tensor) activations; the W8A8 int format here is dynamic "
                             f"per token")
        if "input_smooth" in q._buffers or q.hadamard_block:
            raise ValueError(f"torch_quant.compressed_tensors: layer {name!r} multiplies its "
                             f"input by smoothing factors or a Hadamard rotation, which the "
                             f"int-quantized format cannot express; quantize with "
                             f"QuantConfig(smoothing='off') for this format")
    float_linears = sorted(n for n, m in model.named_modules()
                           if isinstance(m, nn.Linear) or is_conv1d(m))
    modes = sorted({q.act_mode for q in layers.values()})
    groups = {}
    for i, mode in enumerate(modes):
        names = sorted(n for n, q in layers.items() if q.act_mode == mode)
        groups[f"group_{i}"] = {
            "targets": ["Linear"] if len(modes) == 1 else names,
            "weights": _args(True, "channel", False),
            "input_activations": _args(mode == "symmetric", "token", True),
            "output_activations": None,
            "format": "int-quantized",
        }
    return {"quant_method": QUANT_METHOD, "format": "int-quantized",
            "quantization_status": "compressed", "config_groups": groups,
            "ignore": float_linears, "kv_cache_scheme": None, "global_compression_ratio": None,
            "sparsity_config": {}, "transform_config": {},
            "version": f"torch_quant-{__version__}"}


def save_compressed_tensors(model: nn.Module, directory: PathLike) -> None:
    """Write ``model`` (its quantized layers per-token, without smoothing
    factors or rotations) as a compressed-tensors W8A8 checkpoint in
    ``directory``: ``config.json`` (the model's config when it has one, e.g.
    a transformers model, with ``quantization_config``) and
    ``model.safetensors``. Tensors shared by several names (tied weights) are
    written once, under their first name."""
    from safetensors.torch import save_file

    config = compressed_tensors_config(model)
    quantized = {f"{n}." for n, m in model.named_modules(remove_duplicate=False)
                 if isinstance(m, QuantLinear)}
    held = _held_tensors(model)
    tensors: Dict[str, Tensor] = {}
    seen = set()
    for key, t in model.state_dict().items():
        prefix, _, buffer = key.rpartition(".")
        is_quant = f"{prefix}." in quantized
        if is_quant and buffer == "weight_sum":
            continue
        t = t.detach()
        ident = _ident(held.get(key, t))
        if t.numel() and ident in seen:
            continue  # tied, or a layer under two names: written once
        seen.add(ident)
        if is_quant and buffer == "weight_scale":
            t = t.float().reshape(-1, 1)
        tensors[key] = t.cpu().clone().contiguous()
    os.makedirs(directory, exist_ok=True)
    cfg = model.config.to_dict() if hasattr(getattr(model, "config", None), "to_dict") else {}
    cfg["quantization_config"] = config
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    save_file(tensors, os.path.join(directory, WEIGHTS_FILE), metadata={"format": "pt"})


def _describe(args: Optional[dict]) -> str:
    if not args:
        return "none"
    kind = f"{args.get('type', 'int')}{args.get('num_bits', 8)}"
    strategy = args.get("strategy") or "tensor"
    if args.get("group_size"):
        strategy += f"({args['group_size']})"
    return (f"{kind} {strategy} {'dynamic' if args.get('dynamic') else 'static'} "
            f"{'symmetric' if args.get('symmetric', True) else 'asymmetric'}")


def _group_mode(where: str, name: str, group: dict, fmt: str) -> str:
    """The activation mode of a supported group, else ValueError naming its scheme."""
    if not isinstance(group, dict):
        raise ValueError(f"{where}: config group {name!r} is not an object")
    w, a = group.get("weights"), group.get("input_activations")
    scheme = (f"format {group.get('format') or fmt}, weights {_describe(w)}, input activations "
              f"{_describe(a)}" + (", output activations quantized"
                                   if group.get("output_activations") else ""))
    ok_w = (isinstance(w, dict) and w.get("num_bits", 8) == 8 and w.get("type", "int") == "int"
            and w.get("symmetric", True) and w.get("strategy") == "channel"
            and not w.get("dynamic", False) and not w.get("group_size"))
    ok_a = (isinstance(a, dict) and a.get("num_bits", 8) == 8 and a.get("type", "int") == "int"
            and a.get("strategy") == "token" and a.get("dynamic") is True
            and not a.get("group_size"))
    if (group.get("format") or fmt) not in FORMATS or not ok_w or not ok_a \
            or group.get("output_activations"):
        raise ValueError(f"{where}: config group {name!r} uses an unsupported scheme ({scheme}); "
                         f"torch_quant reads int8 per-channel symmetric weights with int8 dynamic "
                         f"per-token activations in the int-quantized format")
    return "symmetric" if a.get("symmetric", True) else "asymmetric"


def _matches(name: str, module: nn.Module, target: str) -> bool:
    """compressed-tensors' target rule: "re:<regex>" matched at the start of
    the name, the exact name, or the name of the module's class (or a base).
    "Linear" also takes our QuantLinear and GPT-2's Conv1D (linear layers
    whose class is not nn.Linear)."""
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    if target == "Linear" and (isinstance(module, QuantLinear) or is_conv1d(module)):
        return True
    return target == name or any(c.__name__ == target for c in type(module).__mro__)


def _read_tensors(directory: str, where: str) -> Dict[str, Tensor]:
    from safetensors.torch import load_file

    index = os.path.join(directory, INDEX_FILE)
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = [WEIGHTS_FILE]
    tensors: Dict[str, Tensor] = {}
    for name in files:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise ValueError(f"{where}: no {name}")
        try:
            tensors.update(load_file(path))
        except Exception as e:  # safetensors raises its own types
            raise ValueError(f"{where}: cannot read {name}: {type(e).__name__}: {e}") from None
    return tensors


def load_compressed_tensors(model: nn.Module, directory: PathLike) -> nn.Module:
    """Load a compressed-tensors W8A8 checkpoint (``config.json`` with its
    ``quantization_config``, ``model.safetensors`` or a sharded index) into
    ``model``, the float model of the same architecture (e.g.
    ``AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory))``):
    the layers the config targets become ``QuantLinear`` (per token, the
    group's activation mode), the rest loads as it is. Everything is checked
    before the model changes; an unsupported scheme or a mismatch is a
    ``ValueError``. Returns ``model``."""
    directory = os.fspath(directory)
    where = f"torch_quant.load_compressed_tensors: {directory}"
    try:
        with open(os.path.join(directory, "config.json")) as f:
            config = json.load(f).get("quantization_config")
    except (OSError, ValueError) as e:
        raise ValueError(f"{where}: cannot read config.json: {e}") from None
    if not isinstance(config, dict) or config.get("quant_method") != QUANT_METHOD:
        raise ValueError(f"{where}: config.json has no compressed-tensors quantization_config")
    fmt = config.get("format")
    status = config.get("quantization_status")
    if status != "compressed":
        raise ValueError(f"{where}: quantization_status is {status!r}; only 'compressed' "
                         f"checkpoints hold int8 weights")
    for key in ("kv_cache_scheme", "sparsity_config", "transform_config"):
        if config.get(key):
            raise ValueError(f"{where}: unsupported scheme: {key} is set ({config[key]!r})")
    groups = config.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise ValueError(f"{where}: quantization_config has no config_groups")
    ignore = config.get("ignore") or []
    modes = {name: _group_mode(where, name, g, fmt) for name, g in groups.items()}

    layers: Dict[str, dict] = {}
    for name, module in model.named_modules():
        if not (isinstance(module, (nn.Linear, QuantLinear)) or is_conv1d(module)):
            continue
        hit = [g for g, group in groups.items()
               if any(_matches(name, module, t) for t in group.get("targets") or [])]
        if not hit or any(_matches(name, module, t) for t in ignore):
            continue
        if isinstance(module, QuantLinear):
            n_out, n_in, bias = module.out_features, module.in_features, module.bias is not None
        else:
            w, b = float_weight_and_bias(module)
            n_out, n_in, bias = w.shape[0], w.shape[1], b is not None
        layers[name] = {"act_mode": modes[hit[-1]], "act_granularity": "per_token",
                        "in_features": n_in, "out_features": n_out, "bias": bias}

    tensors = _read_tensors(directory, where)
    for name, s in layers.items():
        w, scale = tensors.get(f"{name}.weight"), tensors.get(f"{name}.weight_scale")
        if w is None or scale is None:
            raise ValueError(f"{where}: layer {name!r} lacks weight or weight_scale")
        zp = tensors.pop(f"{name}.weight_zero_point", None)
        if zp is not None and bool((zp != 0).any()):
            raise ValueError(f"{where}: layer {name!r} has weight zero points (asymmetric "
                             f"weights are not supported)")
        if w.dtype != torch.int8 or scale.shape not in ((s["out_features"], 1),
                                                        (s["out_features"],)):
            raise ValueError(f"{where}: layer {name!r}: weight {w.dtype} {tuple(w.shape)}, "
                             f"weight_scale {tuple(scale.shape)}; expected int8 [N, K] and "
                             f"[N, 1]")
        if not scale.is_floating_point():
            raise ValueError(f"{where}: {name}.weight_scale must be floating, got {scale.dtype}")
        tensors[f"{name}.weight_scale"] = scale.reshape(-1).float()
        tensors[f"{name}.weight_sum"] = w.sum(1, dtype=torch.int32)
        if f"{name}.bias" in tensors:
            tensors[f"{name}.bias"] = tensors[f"{name}.bias"].float()
    if not layers:
        raise ValueError(f"{where}: the config targets none of the model's linear layers")
    # float tensors in the model's dtypes (checkpoints are often bf16)
    for key, t in model.state_dict().items():
        got = tensors.get(key)
        if (got is not None and got.is_floating_point() and t.is_floating_point()
                and got.dtype != t.dtype and key.rpartition(".")[0] not in layers):
            tensors[key] = got.to(t.dtype)
    return load_layers(model, layers, tensors, where, tied_ok=True)
