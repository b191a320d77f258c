"""``quantize_``: replace a model's linear layers by ``QuantLinear`` as a ``QuantConfig`` says.

Calibration (when ``calibration_data`` is given) runs the float model once over
the data with a forward pre-hook on every layer to be replaced. Each hook keeps
the exact finite min and max of the layer's inputs and a bounded random sample
of input rows (tokens); from these come the static per-tensor ranges (min-max,
or percentiles that clip outliers), the ``act_mode="auto"`` choice and the
activation statistics of the report.
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from . import ops, reference
from .config import QuantConfig
from .nn import (ACT_MODES, QuantLinear, float_weight_and_bias, is_conv1d,
                 largest_hadamard_block, rotated_weight)
from .smoothing import (SmoothGroup, choose_alpha, choose_rotation, find_groups, fold,
                        probe_batch, smoothing_factors)
from .smoothing import _flat_outputs, _run  # model(batch) for a tensor, tuple/list or dict batch

__all__ = ["quantize_", "quantize_model", "smooth_model"]

# act_mode="auto" converts each layer both ways and keeps the mode whose
# output on the layer's sampled calibration inputs (int8 weight, activations
# quantized as the layer does) is closer to the float layer's output, in mean
# squared error; an exact tie keeps symmetric (no zero point to apply). The
# output, not the input, is what the next layer sees: an input channel that
# the weight ignores does not count, one it amplifies counts more.

SAMPLE_ROWS = 256  # input rows (tokens) kept per layer for statistics


class _Observer:
    """Statistics of one layer's inputs during calibration."""

    def __init__(self, name: str, generator: torch.Generator, rotate: int = 0) -> None:
        self.name = name
        self.lo = math.inf
        self.hi = -math.inf
        # with rotate = b > 0, also the range of the inputs rotated by the
        # b-block Hadamard transform (static per-tensor rotation needs it)
        self.rotate = rotate
        self.rot_lo = math.inf
        self.rot_hi = -math.inf
        self.rows: Optional[Tensor] = None  # [<= SAMPLE_ROWS, K] float32 sample
        self.seen = 0  # rows seen so far (reservoir sampling)
        self.gen = generator
        self.ch_lo: Optional[Tensor] = None  # per input channel min and max (float32 [K])
        self.ch_hi: Optional[Tensor] = None

    def divided(self, s: Optional[Tensor]) -> "_Observer":
        """The statistics of the inputs divided by s per channel (smoothing)."""
        if s is None:
            return self
        out = _Observer(self.name, self.gen)
        out.rows, out.seen = self.rows / s, self.seen
        out.ch_lo, out.ch_hi = self.ch_lo / s, self.ch_hi / s
        out.lo, out.hi = float(out.ch_lo.min()), float(out.ch_hi.max())
        return out

    def absmax(self) -> Tensor:
        return torch.maximum(self.ch_lo.abs(), self.ch_hi.abs())

    def __call__(self, module: nn.Module, args) -> None:
        if not args or not isinstance(args[0], Tensor):
            return
        x = args[0].detach()
        if x.numel() == 0:
            return
        if not torch.isfinite(x).all():
            raise ValueError(f"tq.quantize_model: calibration input of layer '{self.name}' "
                             f"holds NaN or inf")
        rows = x.reshape(-1, x.shape[-1]).float().cpu()
        ch_lo, ch_hi = torch.aminmax(rows, dim=0)
        self.ch_lo = ch_lo if self.ch_lo is None else torch.minimum(self.ch_lo, ch_lo)
        self.ch_hi = ch_hi if self.ch_hi is None else torch.maximum(self.ch_hi, ch_hi)
        self.lo = min(self.lo, float(ch_lo.min()))
        self.hi = max(self.hi, float(ch_hi.max()))
        if self.rotate:
            r_lo, r_hi = torch.aminmax(reference.hadamard_rows(rows, self.rotate))
            self.rot_lo = min(self.rot_lo, float(r_lo))
            self.rot_hi = max(self.rot_hi, float(r_hi))
        # Reservoir sampling of rows, so that every row seen is about equally
        # likely to be kept whatever the batch sizes: row i of this batch
        # replaces a random slot with probability SAMPLE_ROWS / (rows seen + 1).
        n = rows.shape[0]
        free = SAMPLE_ROWS - (0 if self.rows is None else self.rows.shape[0])
        head = rows[:max(free, 0)]
        self.rows = head.clone() if self.rows is None else torch.cat([self.rows, head])
        rest = rows[head.shape[0]:]
        if rest.shape[0]:
            seen = self.seen + head.shape[0] + torch.arange(rest.shape[0], dtype=torch.float64)
            slot = (torch.rand(rest.shape[0], generator=self.gen, dtype=torch.float64)
                    * (seen + 1)).long()
            # Row by row, a later row replaces an earlier one in the same
            # slot: an indexed write with repeated slots would leave it to
            # chance (and the thread count) which one stays.
            last: Dict[int, int] = {}
            for i, sl in enumerate(slot.tolist()):
                if sl < SAMPLE_ROWS:
                    last[sl] = i
            if last:
                self.rows[torch.tensor(list(last))] = rest[torch.tensor(list(last.values()))]
        self.seen += n


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


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _progress(data, enabled: bool):
    if not enabled:
        return data
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency; stay usable without it
        return data
    total = len(data) if hasattr(data, "__len__") else None
    return tqdm(data, total=total, desc="tq calibration", unit="batch")


def calibrate(model: nn.Module, layers: Dict[str, nn.Module], data: Iterable,
              progress: bool = True, seed: int = 0, first: Optional[list] = None,
              rotated_ranges: bool = False) -> Dict[str, _Observer]:
    """Runs ``model`` over ``data`` and returns each layer's observer; the
    first batch is appended to ``first`` when given (data may be one-shot).
    ``rotated_ranges``: observers also record the range of Hadamard-rotated
    inputs (block: largest_hadamard_block of the layer's input width)."""
    gen = torch.Generator().manual_seed(seed)
    observers = {name: _Observer(name, gen, largest_hadamard_block(_in_features(m))
                                 if rotated_ranges else 0) for name, m in layers.items()}
    handles = [m.register_forward_pre_hook(observers[name]) for name, m in layers.items()]
    try:
        with torch.no_grad():
            for batch in _progress(data, progress):
                if first is not None and not first:
                    first.append(batch)
                _run(model, batch)
    finally:
        for h in handles:
            h.remove()
    missing = [name for name, o in observers.items() if o.seen == 0]
    if missing:
        raise ValueError(f"tq.quantize_model: the calibration data never reached "
                         f"{len(missing)} layer(s): {', '.join(missing[:5])}"
                         f"{', ...' if len(missing) > 5 else ''}")
    return observers


def _range(lo: float, hi: float, rows: Tensor, percentile: Optional[float]):
    """The (lo, hi) a static per-tensor quantizer should cover: calibration's
    [lo, hi], or the given percentiles of the sampled ``rows`` within it."""
    if percentile is None:
        return lo, hi
    q = torch.tensor([1.0 - percentile / 100.0, percentile / 100.0])
    p_lo, p_hi = torch.quantile(rows.flatten(), q).tolist()
    return max(p_lo, lo), min(p_hi, hi)


_LAYER_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_K = ops._MAX_LINEAR_K  # the ops' exact-int32 limit


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


def _in_features(layer: nn.Module) -> int:
    return float_weight_and_bias(layer)[0].shape[1]


def static_qparams(lo: float, hi: float, mode: str):
    """Per-tensor (scale, zero_point) of the range [lo, hi], computed by the op
    itself so that the rules of docs/semantics.md ("Modes and rounding") apply (range widened to contain 0)."""
    return ops.choose_qparams(torch.tensor([lo, hi], dtype=torch.float32), mode)


def fake_quantize(rows: Tensor, mode: str, granularity: str, scale=None, zero_point=None) -> Tensor:
    """``rows`` quantized and dequantized as the layer would (float32)."""
    if granularity == "per_token":
        q, s, z = ops.quantize_per_token(rows, mode)
        return ops.dequantize(q, s, z)
    q = ops.quantize(rows, scale, zero_point, mode)
    return ops.dequantize(q, scale, zero_point)


def sqnr_db(x: Tensor, x_hat: Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when exact)."""
    signal = float(x.double().pow(2).sum())
    noise = float((x.double() - x_hat.double()).pow(2).sum())
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def range_utilization(lo: Tensor, hi: Tensor, scale: Tensor) -> float:
    """The fraction of the 8-bit integer range that data in [lo, hi] spans once
    divided by ``scale``: ``(hi - lo) / scale / 255``, at most 1 (a clipped
    range uses all of it); the mean when lo, hi, scale are per row. E.g. [-3, 5]
    symmetric: scale 5/127, the data spans -76.2 .. 127, 203.2 / 255 = 79.7%."""
    return float(((hi - lo) / scale / 255.0).clamp(max=1.0).mean())


def act_range_utilization(rows: Tensor, obs: "_Observer", mode: str, granularity: str,
                          scale=None) -> float:
    """range_utilization of a layer's inputs: per token, of each sampled row
    with its own scale; per tensor, of everything calibration saw."""
    if granularity == "per_token":
        _, s, _ = ops.quantize_per_token(rows, mode)
        return range_utilization(rows.amin(-1), rows.amax(-1), s)
    return range_utilization(torch.tensor(obs.lo), torch.tensor(obs.hi), scale)


def _output_mse(layer: nn.Module, q: QuantLinear, rows: Tensor) -> float:
    """Mean squared difference between the quantized and the float layer's
    outputs on ``rows`` (bias included in both, so it cancels)."""
    weight, bias = float_weight_and_bias(layer)
    with torch.no_grad():
        y = torch.nn.functional.linear(rows, weight.detach().float(),
                                       None if bias is None else bias.detach().float())
        y_q = q(rows)
    return float((y_q.double() - y.double()).pow(2).mean())


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
    percentile = config.percentile
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
    first: list = []
    observers = (calibrate(model, unique, calibration_data, progress, first=first,
                           rotated_ranges=alphas is not None and len(alphas) > 1
                           and act_granularity == "per_tensor")
                 if calibration_data is not None else {})
    modes = ACT_MODES if act_mode == "auto" else (act_mode,)
    # Smoothing: the groups (and for folded ones, the model's float weights)
    # are settled before any layer is quantized.
    group_of: Dict[str, SmoothGroup] = {}
    if alphas is not None and first:
        batch = probe_batch(first[0])
        groups = find_groups(model, unique, batch)
        for g in groups:
            obs = observers[g.members[0]]
            weights = [float_weight_and_bias(unique[n])[0].detach().float() for n in g.members]
            n_src = (model.get_submodule(g.source).out_features
                     if g.channel_map is not None else 0)
            g.alpha, errs = choose_alpha(obs.rows, obs.absmax(), obs.ch_lo, obs.ch_hi, weights,
                                         modes, act_granularity, alphas, g.channel_map, n_src)
            if len(alphas) > 1:  # searched: a rotation is one more candidate
                g.hadamard_block = choose_rotation(obs.rows, weights, modes, act_granularity,
                                                   errs, (obs.rot_lo, obs.rot_hi))
                if g.hadamard_block:
                    g.alpha = None
            if g.alpha is not None:
                g.factors = smoothing_factors(obs.absmax(), weights, g.alpha, g.channel_map,
                                              n_src)
        groups = fold(model, groups, batch)
        group_of = {n: g for g in groups for n in g.members}
    # auto: the model's output on the first calibration batch, before any
    # layer is replaced, to check the per-layer choices against (below).
    check_batch = first[0] if act_mode == "auto" and first else None
    first.clear()
    reference_out = None
    if check_batch is not None:
        with torch.no_grad():
            reference_out = _flat_outputs(_run(model, check_batch))

    converted: Dict[int, QuantLinear] = {}
    alternatives: Dict[int, Dict[str, QuantLinear]] = {}  # auto: both modes per layer
    for name, layer in layers.items():
        if id(layer) in converted:
            _set_module(model, name, converted[id(layer)])
            continue
        group = group_of.get(name)
        s = group.factors if group is not None else None
        raw = observers.get(name)
        obs = raw.divided(s) if raw is not None else None  # what gets quantized: x / s
        rows = obs.rows if obs is not None else None
        # what the layer receives: x itself when the quantize step divides it
        rows_in = raw.rows if group is not None and group.kind == "input" and s is not None else rows
        smooth_arg = s if group is not None and group.kind == "input" else None
        block = group.hadamard_block if group is not None else 0
        if block and rows is not None:  # statistics of what gets quantized: the rotated rows
            rows = reference.hadamard_rows(rows, block)
        stats: dict = {"float_weight_bytes": sum(
            t.numel() * t.element_size() for t in (layer.weight, layer.bias) if t is not None)}
        if group is not None:
            stats["smoothing"] = group.describe()
        if act_granularity == "per_tensor":
            # (a rotated layer: calibration's range of its rotated inputs)
            lo, hi = (_range(obs.lo, obs.hi, rows, percentile) if not block
                      else _range(raw.rot_lo, raw.rot_hi, rows, percentile))
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
            err = {m: _output_mse(layer, candidates[m][0], rows_in) for m in ACT_MODES}
            stats["auto_output_mse"] = err
            # strict: equal errors (e.g. all-zero inputs) keep the zero point out
            mode = "asymmetric" if err["asymmetric"] < err["symmetric"] else "symmetric"
        w = float_weight_and_bias(layer)[0].detach().float()
        if smooth_arg is not None:
            w = w * smooth_arg
        if block:
            w = rotated_weight(w, block)
        for m, (q, scale, zp) in candidates.items():
            q.stats = dict(stats, weight_sqnr_db=sqnr_db(w, q.dequantized_weight()))
            if rows is not None:
                q.stats["act_range_utilization"] = act_range_utilization(rows, obs, m,
                                                                         act_granularity, scale)
                q.stats["act_sqnr_db"] = sqnr_db(rows, fake_quantize(rows, m, act_granularity,
                                                                     scale, zp))
                q.stats["calibration_rows"] = obs.seen
            q.train(layer.training)
        if act_mode == "auto":
            alternatives[id(layer)] = {m: c[0] for m, c in candidates.items()}
        q = candidates[mode][0]
        del candidates
        converted[id(layer)] = q
        _set_module(model, name, q)
    if alternatives and reference_out is not None:
        _check_auto(model, layers, alternatives, converted, check_batch, reference_out)
    return model


def quantize_model(model: nn.Module, act_mode: str = "symmetric",
                   act_granularity: str = "per_token", calibration_data: Optional[Iterable] = None,
                   skip: Union[None, str, Sequence[str]] = None, *,
                   percentile: Optional[float] = None, smoothing: Union[None, str, float] = "auto",
                   progress: bool = True) -> nn.Module:
    """``quantize_(model, QuantConfig(act_mode, act_granularity, smoothing, skip,
    percentile), calibration_data)``: the same, with the settings as arguments."""
    return quantize_(model, QuantConfig(act_mode, act_granularity, smoothing, skip, percentile),
                     calibration_data, progress=progress)


def _model_error(model: nn.Module, batch, reference_out: List[Tensor]) -> float:
    """Squared error of the model's outputs on ``batch`` over the reference's power."""
    with torch.no_grad():
        out = _flat_outputs(_run(model, batch))
    err = sum(float((o.double() - r.double()).pow(2).sum()) for o, r in zip(out, reference_out))
    power = sum(float(r.double().pow(2).sum()) for r in reference_out)
    return err / power if power > 0 else err


def _check_auto(model: nn.Module, layers: Dict[str, nn.Module],
                alternatives: Dict[int, Dict[str, QuantLinear]], converted: Dict[int, QuantLinear],
                batch, reference_out: List[Tensor]) -> None:
    """auto's per-layer choices against every layer in one fixed mode, on the
    model's output for the first calibration batch: layer by layer errors add
    up differently through a model, and auto must not end worse than the
    better fixed mode. The per-layer choices stay unless a fixed mode is
    strictly better; every layer's report records the three errors."""
    per_layer = {i: q.act_mode for i, q in converted.items()}
    picks = {"per_layer": per_layer, **{m: {i: m for i in alternatives} for m in ACT_MODES}}

    def apply(pick):
        for name, layer in layers.items():
            _set_module(model, name, alternatives[id(layer)][pick[id(layer)]])

    errors = {}
    for label, pick in picks.items():
        apply(pick)
        errors[label] = _model_error(model, batch, reference_out)
    best = min(errors, key=lambda k: (errors[k], k != "per_layer"))
    apply(picks[best])
    for i, qs in alternatives.items():
        converted[i] = qs[picks[best][i]]
        converted[i].stats["auto_model_error"] = dict(errors, chosen=best)


def smooth_model(model: nn.Module, calibration_data: Iterable, alpha: float = 0.5,
                 skip: Union[None, str, Sequence[str]] = None, progress: bool = False
                 ) -> Dict[str, dict]:
    """Fold activation smoothing with a fixed ``alpha`` into the float model,
    in place, without quantizing anything (what ``quantize_model(...,
    smoothing=alpha)`` does first). The model's outputs change by float
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
    first: list = []
    observers = calibrate(model, unique, calibration_data, progress, first=first)
    batch = probe_batch(first[0])
    groups = find_groups(model, unique, batch)
    for g in groups:
        if g.kind == "input":
            continue
        obs = observers[g.members[0]]
        weights = [float_weight_and_bias(unique[n])[0].detach().float() for n in g.members]
        n_src = model.get_submodule(g.source).out_features if g.channel_map is not None else 0
        g.alpha = float(alpha)
        g.factors = smoothing_factors(obs.absmax(), weights, g.alpha, g.channel_map, n_src)
    groups = fold(model, groups, batch)
    out = {}
    for g in groups:
        info = g.describe() if g.kind != "input" else {"kind": "input", "source": None,
                                                       "alpha": None, "factor_min": None,
                                                       "factor_max": None}
        for n in g.members:
            out[n] = info
    return {n: out[first_name[id(layers[n])]] for n in layers}


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


def quantized_layers(model: nn.Module) -> List[tuple]:
    """``(name, QuantLinear)`` of every quantized layer, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)]
