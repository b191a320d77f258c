"""``quantize_``: replace a model's linear layers by ``QuantLinear`` as a
``QuantConfig`` says: the targets and their checks, calibration
(calibration.py), smoothing (smoothing.py), the mode policy (auto.py), the
statistics of the report (statistics.py), then the swap.
"""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import replace
from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch import nn

from ..ops import fake_kernels
from ..hadamard import hadamard_rows
from .auto import check_auto, choose_mode
from .calibration import calibrate, static_range
from .config import QuantConfig
from ..float_layers import float_weight_and_bias, is_conv1d, set_module, transformed_weight
from ..nn import ACT_MODES, QuantLinear, quantized_layers, watch_loads
from .smoothing import (SmoothGroup, choose_alpha, choose_rotation, find_groups, fold,
                        probe_batch, smoothing_factors)
from .running import flat_outputs, run_model
from .statistics import (act_range_utilization, fake_quantize, output_mse, sqnr_db,
                         static_qparams)

__all__ = ["quantize_", "quantize_model", "smooth_model", "quantized_layers"]


def _matches(name: str, pattern: str) -> bool:
    """name, or a module containing it ("blocks.0" for "blocks.0.mlp.fc"), matches."""
    parts = name.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[:i]), pattern) for i in range(1, len(parts) + 1))


def _targets(model: nn.Module, skip: Sequence[str]) -> Dict[str, nn.Module]:
    """Every linear layer to convert, under each of its names (a module used
    twice is listed twice, and converted once)."""
    out = {}
    used = set()
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, QuantLinear) or not name:
            continue
        if isinstance(module, nn.Linear) or is_conv1d(module):
            hits = [p for p in skip if _matches(name, p)]
            used.update(hits)
            if not hits:
                out[name] = module
    unused = [p for p in skip if p not in used]
    if unused:
        warnings.warn(f"tq.quantize_: skip pattern(s) {', '.join(map(repr, unused))} "
                      f"matched no linear layer", stacklevel=3)
    return out


def _unique(layers: Dict[str, nn.Module]) -> Dict[str, nn.Module]:
    """Each module object once, under the first of its names."""
    out: Dict[str, nn.Module] = {}
    seen = set()
    for name, layer in layers.items():
        if id(layer) not in seen:
            seen.add(id(layer))
            out[name] = layer
    return out


_LAYER_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_K = fake_kernels.MAX_LINEAR_K  # the ops' exact-int32 limit


def check_convertible(where: str, name: str, layer: nn.Module) -> None:
    """ValueError naming the layer unless it can become a QuantLinear that
    runs: weights on a CPU or CUDA device (not meta), float32/16/bf16, finite,
    and an input width within the exact int32 limit."""
    weight, bias = float_weight_and_bias(layer)
    params = [t for t in (weight, bias) if t is not None]
    for t in params:
        if t.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{where}: layer {name!r} has its weights on the {t.device.type} "
                             f"device; load or move them to CPU or CUDA first")
        if t.dtype not in _LAYER_DTYPES:
            raise ValueError(f"{where}: layer {name!r} is {t.dtype}; the ops take float32, "
                             f"float16 or bfloat16 (convert the model first, e.g. model.float())")
    if weight.shape[1] > _MAX_K:
        raise ValueError(f"{where}: layer {name!r} has {weight.shape[1]} input features, more "
                         f"than {_MAX_K}, the largest whose int32 accumulation is exact; pass "
                         f"skip={name!r} to keep it in float")
    for label, t in (("weight", weight), ("bias", bias)):
        if t is not None and not bool(torch.isfinite(t.detach()).all()):
            raise ValueError(f"{where}: the {label} of layer {name!r} holds NaN or inf")


def quantize_(model: nn.Module, config: Optional[QuantConfig] = None,
              calibration_data: Optional[Iterable] = None, *, progress: bool = True) -> nn.Module:
    """Replace every ``nn.Linear`` and Hugging Face ``Conv1D`` of ``model``
    (but those ``config.skip`` names) by a :class:`QuantLinear`, in place, as
    ``config`` (a :class:`QuantConfig`, default ``QuantConfig()``) says;
    returns ``model``.

    ``calibration_data``: an iterable of batches, each a tensor
    (``model(x)``), a tuple or list (``model(*batch)``) or a dict
    (``model(**batch)``), run once without gradients. Needed for static
    (per-tensor) activations, ``act_mode="auto"`` and a smoothing search or
    alpha; optional otherwise (then the report also has activation
    statistics, and smoothing "auto" searches). ``progress``: a progress bar
    during calibration.

    Every target layer is checked first (device, dtype, finite weights, K
    within the exact limit): an error names the layer and leaves the model
    as it was."""
    where = "tq.quantize_"
    if config is None:
        config = QuantConfig()
    if not isinstance(config, QuantConfig):
        raise TypeError(f"{where}: config must be a tq.QuantConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"{where}: model must be an nn.Module, got {type(model).__name__}")
    needs = config.needs_calibration()
    if calibration_data is None and needs:
        verb = "needs" if len(needs) == 1 else "need"
        raise ValueError(f"{where}: {' and '.join(needs)} {verb} calibration_data "
                         f"(an iterable of input batches)")
    act_mode, act_granularity = config.act_mode, config.act_granularity
    alphas = config.smoothing_alphas(calibration_data is not None)
    skip = config.skip

    if isinstance(model, nn.Linear) or is_conv1d(model):
        raise TypeError(f"{where}: model is itself a linear layer and cannot be replaced in "
                        f"place; use tq.QuantLinear.from_float(layer, ...)")
    layers = _targets(model, skip)
    # One observer and one QuantLinear per module object, whatever its names.
    unique = _unique(layers)
    # Every layer is checked before anything (calibration, folding, the swap)
    # touches the model: an error leaves it exactly as it was.
    for name, layer in unique.items():
        check_convertible(where, name, layer)
    _warn_tied(model, unique)
    observers, first_batch = (calibrate(model, unique, calibration_data, progress,
                                        rotated_ranges=alphas is not None and len(alphas) > 1
                                        and act_granularity == "per_tensor")
                              if calibration_data is not None else ({}, None))
    modes = ACT_MODES if act_mode == "auto" else (act_mode,)
    # Smoothing: the groups (and for folded ones, the model's float weights)
    # are settled before any layer is quantized.
    group_of = (_settle_smoothing(model, unique, observers, first_batch, alphas, modes,
                                  act_granularity)
                if alphas is not None and first_batch is not None else {})
    # auto: the model's output on the first calibration batch, before any
    # layer is replaced, to check the per-layer choices against (below).
    check_batch = first_batch if act_mode == "auto" else None
    del first_batch  # (not held longer than needed: it may be large)
    reference_out = None
    if check_batch is not None:
        with torch.no_grad():
            reference_out = flat_outputs(run_model(model, check_batch))

    # One QuantLinear per module object (candidates: every mode's, with its
    # statistics), set under each of the module's names.
    candidates: Dict[int, Dict[str, tuple]] = {}
    chosen: Dict[int, str] = {}
    for name, layer in layers.items():
        if id(layer) not in candidates:
            chosen[id(layer)], candidates[id(layer)] = _convert_layer(
                layer, group_of.get(name), observers.get(name), modes, config)
        set_module(model, name, candidates[id(layer)][chosen[id(layer)]][0])
    model_error = None
    if act_mode == "auto" and reference_out is not None:
        alternatives = {i: {m: c[0] for m, c in cs.items()} for i, cs in candidates.items()}
        chosen, model_error = check_auto(model, layers, alternatives, chosen, check_batch,
                                         reference_out)
    for i, mode in chosen.items():
        q, stats = candidates[i][mode]
        q.record_stats(stats if model_error is None else dict(stats, auto_model_error=model_error))
    watch_loads(model)  # model.load_state_dict checks every layer before any loads
    return model


def _settle_smoothing(model: nn.Module, unique: Dict[str, nn.Module], observers, batch,
                      alphas, modes, act_granularity: str) -> Dict[str, SmoothGroup]:
    """Each group's smoothing, chosen from calibration (an alpha from the
    search, or a Hadamard rotation where the search prefers it) and folded
    into the model where it can be; layer name -> its group as it ends up."""
    batch = probe_batch(batch)
    groups = [_choose_smoothing(g, *_group_inputs(model, unique, observers, g), alphas, modes,
                                act_granularity)
              for g in find_groups(model, unique, batch)]
    groups = fold(model, groups, batch)
    return {n: g for g in groups for n in g.members}


def _choose_smoothing(g: SmoothGroup, obs, weights, n_src: int, alphas, modes,
                      act_granularity: str) -> SmoothGroup:
    """The group with its smoothing chosen: the alpha of the search's least
    error and its factors, or (when searched, and better) a Hadamard rotation
    instead."""
    alpha, errs = choose_alpha(obs.rows, obs.absmax(), obs.ch_lo, obs.ch_hi, weights, modes,
                               act_granularity, alphas, g.channel_map, n_src)
    block = 0
    if len(alphas) > 1:  # searched: a rotation is one more candidate
        block = choose_rotation(obs.rows, weights, modes, act_granularity, errs,
                                (obs.rot_lo, obs.rot_hi))
        if block:
            alpha = None
    factors = (smoothing_factors(obs.absmax(), weights, alpha, g.channel_map, n_src)
               if alpha is not None else None)
    return replace(g, alpha=alpha, hadamard_block=block, factors=factors)


def _convert_layer(layer: nn.Module, group: Optional[SmoothGroup], raw, modes,
                   config: QuantConfig):
    """The mode of one layer's QuantLinear (config's; for "auto", the mode
    whose output error on the calibration rows is lower) and every mode's
    candidate: mode -> (QuantLinear, its statistics for the report), from
    which auto's model-level check may still pick another."""
    act_mode, act_granularity = config.act_mode, config.act_granularity
    s = group.factors if group is not None else None
    obs = raw.divided(s) if raw is not None else None  # what gets quantized: x / s
    rows = obs.rows if obs is not None else None
    # what the layer receives: x itself when the quantize step divides it
    rows_in = raw.rows if group is not None and group.kind == "input" and s is not None else rows
    smooth_arg = s if group is not None and group.kind == "input" else None
    block = group.hadamard_block if group is not None else 0
    if block and rows is not None:  # statistics of what gets quantized: the rotated rows
        rows = hadamard_rows(rows, block)
    stats: dict = {"float_weight_bytes": sum(
        t.numel() * t.element_size() for t in (layer.weight, layer.bias) if t is not None)}
    if group is not None:
        stats["smoothing"] = group.describe()
    if act_granularity == "per_tensor":
        # (a rotated layer: calibration's range of its rotated inputs)
        lo, hi = (static_range(obs.lo, obs.hi, rows, config.percentile) if not block
                  else static_range(raw.rot_lo, raw.rot_hi, rows, config.percentile))
        stats["calibrated_range"] = (lo, hi)
    candidates = {}
    for m in modes:
        scale = zp = None
        if act_granularity == "per_tensor":
            scale, zp = static_qparams(lo, hi, m)
        candidates[m] = (QuantLinear.from_float(layer, m, act_granularity, scale, zp,
                                                smooth=smooth_arg, hadamard_block=block),
                         scale, zp)
    mode = act_mode
    if act_mode == "auto":
        err = {m: output_mse(layer, candidates[m][0], rows_in) for m in ACT_MODES}
        stats["auto_output_mse"] = err
        mode = choose_mode(err)
    w = transformed_weight(float_weight_and_bias(layer)[0], smooth_arg, block)
    out = {}
    for m, (q, scale, zp) in candidates.items():
        own = dict(stats, weight_sqnr_db=sqnr_db(w, q.dequantized_weight()))
        if rows is not None:
            own["act_range_utilization"] = act_range_utilization(rows, obs, m, act_granularity,
                                                                 scale)
            own["act_sqnr_db"] = sqnr_db(rows, fake_quantize(rows, m, act_granularity, scale, zp))
            own["calibration_rows"] = obs.seen
        q.train(layer.training)
        out[m] = (q, own)
    return mode, out


def quantize_model(model: nn.Module, act_mode: str = "symmetric",
                   act_granularity: str = "per_token", calibration_data: Optional[Iterable] = None,
                   skip: Union[None, str, Sequence[str]] = None, *,
                   percentile: Optional[float] = None, smoothing: Union[None, str, float] = "auto",
                   progress: bool = True) -> nn.Module:
    """``quantize_(model, QuantConfig(act_mode, act_granularity, smoothing, skip,
    percentile), calibration_data)``: the same, with the settings as arguments."""
    return quantize_(model, QuantConfig(act_mode, act_granularity, smoothing, skip, percentile),
                     calibration_data, progress=progress)


def smooth_model(model: nn.Module, calibration_data: Iterable, alpha: float = 0.5,
                 skip: Union[None, str, Sequence[str]] = None, progress: bool = False
                 ) -> Dict[str, dict]:
    """Fold activation smoothing with a fixed ``alpha`` into the float model,
    in place, without quantizing anything (what ``quantize_`` with
    ``QuantConfig(smoothing=alpha)`` does first). The model's outputs change by float
    rounding only. Layers whose factors cannot be folded (their input does
    not come straight from a norm or, channel by channel, from a previous
    linear layer) are left as they are. Returns, per linear layer, how it was
    smoothed (``LayerReport.smoothing``'s fields)."""
    where = "tq.smooth_model"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{where}: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{where}: alpha must be in [0, 1], got {alpha!r}")
    skip = (skip,) if isinstance(skip, str) else tuple(skip or ())
    layers = _targets(model, skip)
    unique = _unique(layers)
    first_name = {id(m): n for n, m in unique.items()}
    observers, first_batch = calibrate(model, unique, calibration_data, progress)
    batch = probe_batch(first_batch)
    groups = find_groups(model, unique, batch)
    for i, g in enumerate(groups):
        if g.kind == "input":
            continue
        obs, weights, n_src = _group_inputs(model, unique, observers, g)
        groups[i] = replace(g, alpha=float(alpha), factors=smoothing_factors(
            obs.absmax(), weights, float(alpha), g.channel_map, n_src))
    groups = fold(model, groups, batch)
    out = {}
    for g in groups:
        info = g.describe() if g.kind != "input" else {"kind": "input", "source": None,
                                                       "alpha": None, "factor_min": None,
                                                       "factor_max": None}
        for n in g.members:
            out[n] = info
    return {n: out[first_name[id(layers[n])]] for n in layers}


def _group_inputs(model: nn.Module, unique: Dict[str, nn.Module], observers, g: SmoothGroup):
    """What a group's factors are chosen from: its calibration observer (its
    first member's: they share the input), its members' float weights, and
    the width of its source's output (0 without a channel map)."""
    obs = observers[g.members[0]]
    weights = [float_weight_and_bias(unique[n])[0].detach().float() for n in g.members]
    n_src = model.get_submodule(g.source).out_features if g.channel_map is not None else 0
    return obs, weights, n_src


def _warn_tied(model: nn.Module, layers: Dict[str, nn.Module]) -> None:
    """Warn about layers whose weight is shared with another module (a tied
    output embedding): the int8 copy unties them, and a later
    ``model.tie_weights()`` (transformers) would put the float tensor back."""
    owners: Dict[int, List[str]] = {}
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append(f"{mname}.{pname}" if mname else pname)
    for name, layer in layers.items():
        shared = [o for o in owners.get(id(layer.weight), []) if not o.startswith(name + ".")]
        if shared:
            warnings.warn(f"tq.quantize_: the weight of {name!r} is tied to {shared[0]!r}; "
                          f"its int8 copy unties them (calling tie_weights() afterwards would "
                          f"break the layer). Pass skip={name!r} to keep it in float.",
                          stacklevel=3)
