"""``tq.save`` / ``tq.load``: a quantized model's tensors in a safetensors file,
with the quantization settings of every layer in its metadata.

``load`` reads and checks the whole file against the model before it changes
anything, so a truncated, foreign or mismatched file raises ``ValueError`` and
leaves the model as it was. It loads into a model that is quantized with the
same settings, or into the float model: then it first replaces the layers the
file names by ``QuantLinear`` with the recorded settings.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Dict, Optional, Union

import torch
from torch import Tensor, nn

from ..float_layers import float_weight_and_bias, is_conv1d, set_module
from ..hadamard import check_hadamard_block
from ..nn import (ACT_GRANULARITIES, ACT_MODES, PackedWeight, QuantLinear, quantized_layers,
                  watch_loads)

__all__ = ["save", "load"]

FORMAT = "torch_quant.w8a8"
PathLike = Union[str, os.PathLike]


def _settings(q: QuantLinear) -> dict:
    s = {"act_mode": q.act_mode, "act_granularity": q.act_granularity,
         "in_features": q.in_features, "out_features": q.out_features,
         "bias": q.bias is not None}
    if "input_smooth" in q._buffers:  # recorded only when present (older files lack it)
        s["smooth"] = True
    if q.hadamard_block:  # likewise
        s["hadamard_block"] = q.hadamard_block
    return s


def save(model: nn.Module, path: PathLike) -> None:
    """Write ``model.state_dict()`` and each ``QuantLinear``'s settings to
    ``path`` (safetensors). Tensors that share memory (tied weights) are
    written once. The file is written whole or not at all."""
    from safetensors.torch import save_file

    from .. import __version__

    layers = {name: _settings(q) for name, q in quantized_layers(model)}
    if not layers:
        raise ValueError("tq.save: the model has no QuantLinear layer; quantize it first "
                         "(tq.quantize_)")
    tensors: Dict[str, Tensor] = {}
    aliases: Dict[str, str] = {}
    seen: Dict[tuple, str] = {}
    # A QuantLinear's state_dict weight is unpacked anew on every call: know
    # it by the packed buffer it comes from, so that a layer registered under
    # two names is still written once.
    packed_of = _held_tensors(model)
    for key, t in model.state_dict().items():
        t = t.detach()
        ident = _ident(packed_of.get(key, t))
        if t.numel() and ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = t.cpu().clone().contiguous()
    metadata = {"format": FORMAT, "torch_quant_version": __version__,
                "layers": json.dumps(layers, sort_keys=True),
                "aliases": json.dumps(aliases, sort_keys=True)}
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tq-save-", suffix=".safetensors")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _held_tensors(model: nn.Module, replacements: Optional[Dict[str, QuantLinear]] = None
                  ) -> Dict[str, Tensor]:
    """The buffer each QuantLinear weight's state-dict entry comes from (its
    state_dict unpacks a packed weight anew on every call): what identifies
    it, so that a layer under two names is known as one."""
    held = {}
    for name, m in model.named_modules(remove_duplicate=False):
        m = (replacements or {}).get(name, m)
        if isinstance(m, QuantLinear):
            w = m.weight
            held[f"{name}.weight" if name else "weight"] = (w.packed if isinstance(w, PackedWeight)
                                                            else w)
    return held


def _ident(t: Tensor) -> tuple:
    """What identifies a tensor's memory (tied tensors share it)."""
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
            tuple(t.stride()), t.dtype)


def _check_metadata(layers: object, aliases: object) -> None:
    """ValueError unless the metadata has the shape save() writes: layers a
    dict of name -> settings (each with its keys and value types), aliases a
    dict of str -> str."""
    if not isinstance(layers, dict):
        raise ValueError(f"'layers' must be a JSON object, got {type(layers).__name__}")
    if not isinstance(aliases, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise ValueError("'aliases' must be a JSON object of names")
    required = {"act_mode": str, "act_granularity": str, "in_features": int,
                "out_features": int, "bias": bool}
    optional = {"smooth": bool, "hadamard_block": int}
    for name, s in layers.items():
        if not isinstance(s, dict):
            raise ValueError(f"layer {name!r}: settings must be a JSON object, got {s!r}")
        for key, kind in required.items():
            if key not in s:
                raise ValueError(f"layer {name!r}: settings lack {key!r}")
        for key, value in s.items():
            kind = required.get(key, optional.get(key))
            if kind is None:
                raise ValueError(f"layer {name!r}: unknown setting {key!r}")
            # bool is an int in Python: an int setting must not be a bool
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ValueError(f"layer {name!r}: {key} must be a {kind.__name__}, got {value!r}")
        if s["act_mode"] not in ACT_MODES or s["act_granularity"] not in ACT_GRANULARITIES:
            raise ValueError(f"unknown settings for layer {name!r}: {s}")
        if s["in_features"] < 0 or s["out_features"] < 0:
            raise ValueError(f"layer {name!r}: negative feature count in {s}")
        check_hadamard_block(f"layer {name!r}", s.get("hadamard_block", 0), s["in_features"])


def _read(path: str):
    """(metadata, tensors) of a torch_quant file, or ValueError."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise ValueError(f"tq.load: no such file: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ValueError(f"tq.load: {path} is a safetensors file but not one written "
                                 f"by tq.save (metadata format={metadata.get('format')!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except ValueError:
        raise
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"tq.load: cannot read {path} as a safetensors file (truncated or "
                         f"not safetensors?): {type(e).__name__}: {e}") from None
    try:
        layers = json.loads(metadata["layers"])
        aliases = json.loads(metadata.get("aliases", "{}"))
        _check_metadata(layers, aliases)
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"tq.load: {path} has damaged metadata: {e}") from None
    for key, target in aliases.items():
        if target not in tensors:
            raise ValueError(f"tq.load: {path} has damaged metadata: alias {key!r} of a "
                             f"missing tensor {target!r}")
        tensors[key] = tensors[target]
    return layers, tensors


def load(model: nn.Module, path: PathLike) -> nn.Module:
    """Load a file written by :func:`save` into ``model`` (in place; returns it).

    ``model`` is either quantized with the settings the file records, or the
    float model they came from; any mismatch (missing layer, other settings or
    shapes, extra or missing tensors) or invalid value (a scale that is not
    finite and > 0, a zero point outside its mode's range, a ``weight_sum``
    that is not the weight's row sums, a non-finite bias: see
    ``QuantLinear.check_state``) raises ``ValueError`` naming the key before
    the model is touched. A layer shared under several names stays one
    module."""
    path = os.fspath(path)
    layers, tensors = _read(path)
    return load_layers(model, layers, tensors, f"tq.load: {path}")


def load_layers(model: nn.Module, layers: dict, tensors: Dict[str, Tensor], where: str,
                tied_ok: bool = False) -> nn.Module:
    """Load ``tensors`` (a whole state dict, our layout) into ``model``, whose
    layers named in ``layers`` (name -> settings, as ``_settings`` gives
    them) are quantized or become so: everything checked before anything
    changes (ValueError starting with ``where``). ``tied_ok``: a key the file
    lacks is taken from another key the model ties it to (formats that write
    tied weights once)."""

    # A module registered under several names (model.a = model.b = Linear)
    # is recorded once, under its first name: it is replaced under all.
    names_of: Dict[int, list] = {}
    for n, m in model.named_modules(remove_duplicate=False):
        names_of.setdefault(id(m), []).append(n)

    # The modules the model will have: recorded layers that are still float
    # are replaced by empty QuantLinear modules with the recorded settings.
    replacements: Dict[str, QuantLinear] = {}
    checked: Dict[str, QuantLinear] = {}
    for name, s in layers.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{where} has quantized layer {name!r}, which the model "
                             f"does not have") from None
        if isinstance(module, QuantLinear):
            if _settings(module) != s:
                raise ValueError(f"{where}: layer {name!r} is quantized as {_settings(module)} "
                                 f"in the model but as {s} in the file")
            checked[name] = module
            continue
        if not (isinstance(module, nn.Linear) or is_conv1d(module)):
            raise ValueError(f"{where}: layer {name!r} is a {type(module).__name__}, not a "
                             f"linear layer")
        weight, bias = float_weight_and_bias(module)
        shape = {"in_features": weight.shape[1], "out_features": weight.shape[0],
                 "bias": bias is not None}
        if any(shape[k] != s[k] for k in shape):
            raise ValueError(f"{where}: layer {name!r} has {shape} in the model but {s} in the file")
        with torch.no_grad():
            q = QuantLinear(s["in_features"], s["out_features"], s["bias"], act_mode=s["act_mode"],
                            act_granularity=s["act_granularity"], device=weight.device,
                            smooth=bool(s.get("smooth")), hadamard_block=s.get("hadamard_block", 0))
        for alias in names_of[id(module)]:
            replacements[alias] = q
        checked[name] = q
    extra = [n for n, _ in quantized_layers(model) if n not in layers]
    if extra:
        raise ValueError(f"{where}: the model has quantized layers that the file does not: "
                         f"{', '.join(extra[:5])}")

    # The state dict the model will have, checked key by key.
    expected: Dict[str, Tensor] = {}
    for key, t in model.state_dict().items():
        if not any(key.startswith(n + ".") for n in replacements):
            expected[key] = t
    for name, q in replacements.items():
        for key, t in q.state_dict().items():
            expected[f"{name}.{key}"] = t
    if tied_ok:  # a tensor written once for several names: the model's other name
        held = _held_tensors(model, replacements)
        idents = {k: _ident(held.get(k, t)) for k, t in expected.items()
                  if t.numel() and t.device.type != "meta"}
        by_storage: Dict[tuple, str] = {}
        for key, ident in idents.items():
            if key in tensors:
                by_storage.setdefault(ident, key)
        for key, ident in idents.items():
            other = by_storage.get(ident)
            if key not in tensors and other is not None:
                tensors[key] = tensors[other]
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{where} does not match the model: missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}")
    for key, t in expected.items():
        got = tensors[key]
        if got.shape != t.shape or got.dtype != t.dtype:
            raise ValueError(f"{where}: {key!r} is {tuple(got.shape)} {got.dtype} in the file but "
                             f"{tuple(t.shape)} {t.dtype} in the model")
    # The values of every quantized layer (scales, zero points, weight sums).
    for name, q in checked.items():
        own = {b: tensors[f"{name}.{b}"] for b in q.state_names() if f"{name}.{b}" in tensors}
        q.check_state(own, where, f"{name}.")

    for name, q in replacements.items():
        q.train(model.get_submodule(name).training)
    for name, q in replacements.items():
        set_module(model, name, q)
    # Everything is checked: each quantized layer loads its own entries (its
    # load lays the weight out, the one pass over it left), the rest of the
    # model the others (its load_state_dict hooks see no quantized layer's).
    quant = {n for n, m in model.named_modules(remove_duplicate=False)
             if isinstance(m, QuantLinear)}
    model.load_state_dict({k: t for k, t in tensors.items()
                           if k.rpartition(".")[0] not in quant}, strict=False)
    for name, q in checked.items():
        q.load_state_dict({b: tensors[f"{name}.{b}"] for b in q.state_names()
                           if f"{name}.{b}" in tensors}, strict=True)
    watch_loads(model)
    return model
