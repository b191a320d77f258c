"""Activation smoothing for ``quantize_`` (SmoothQuant: Xiao et al., 2023).

A few input channels of a layer can carry values many times larger than the
rest of the row (after the norms of a transformer), so one scale per token
spends most of the 8-bit range on them. Smoothing divides input channel j by
a factor ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` and multiplies the
weight's column j by it: the product is unchanged, the activations are
flatter, the weights a little less so.

Where the division goes, found from the model's behaviour on one calibration
batch (names are never read):

* **into a norm**: a module with a 1-d ``weight`` whose returned tensor is the
  very tensor a layer receives. Its gain (and bias) is divided by s; all the
  layers that read that tensor share s. Two gain forms are recognised by
  trying them on the norm's own input: ``y = n(x) * weight (+ bias)``
  (LayerNorm, RMSNorm) and ``y = n(x) * (1 + weight)`` (Gemma).
* **into the previous linear layer** A of a layer B when B's input is, channel
  by channel, proportional to A's output rows (``v_proj -> o_proj`` through
  attention, ``up_proj -> down_proj`` through a gated MLP, ``fc1 -> ReLU ->
  fc2``): found by scaling A's rows by distinct factors and watching which
  later inputs change by exactly those factors.
* **otherwise into the quantize step** of the layer itself (the ``smooth``
  argument of ``dynamic_quantized_linear``; ``QuantLinear.input_smooth``).

Each fold is checked (the norm on its input, then the model's inputs and
output on the batch); a fold that changes the float model beyond rounding is
undone and the layers use the quantize-step path. ``alpha`` is fixed, or
searched per group of layers that share an input: the one whose layers'
outputs on the sampled calibration rows (int8 weight, activations quantized
as the layer will) are closest to the float outputs (error relative to the
output's power, summed over the group; "off" is a candidate).

With per-token activations the search has one more candidate per group: no
smoothing, and a **Hadamard rotation** of each layer's input instead
(``hadamard_block`` of ``dynamic_quantized_linear``; the weight holds
``W H / b``). A rotation mixes every channel of a run of b into every other,
so an outlier channel no longer sets a row's scale alone: on Gemma 3 270M's
``down_proj`` inputs (the product of the gated MLP, which no per-channel
factor flattens well) it cut the mean KL divergence from fp32 of quantizing
those layers alone from 0.0067 (searched smoothing) to 0.0008. It is chosen
where it gives the smaller summed layer output error, like an alpha.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from . import ops, reference
from .nn import float_weight_and_bias, largest_hadamard_block, rotated_weight

__all__ = ["SEARCH_ALPHAS", "STATIC_MAX_ALPHA", "SmoothGroup", "find_groups",
           "smoothing_factors", "fold", "choose_alpha", "choose_rotation",
           "probe_batch"]

#: alphas tried by the search (besides no smoothing)
SEARCH_ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: ... of which static (per-tensor) modes try those up to this one. Their
#: per-layer output error keeps falling up to alpha 0.9, but the model does
#: not follow: SmolLM2-135M, static asymmetric, 8192 tokens: searched up to
#: 0.9 (median pick 0.9) KL 0.060 from fp32 (+5.1% perplexity), alpha 0.85
#: everywhere 0.051 (+4.0%), 0.7 everywhere 0.038 (+3.2%). The large factors
#: move the outlier channels into the weights, whose rounding error is the
#: same for every token and adds up from layer to layer, which a per-layer
#: mean squared error on independent rows undercounts.
STATIC_MAX_ALPHA = 0.7
PROBE_ROWS = 64  # rows of each layer's input compared when probing
_FACTOR_RANGE = 1e4  # factors are clamped to [1 / 1e4, 1e4] after normalisation


@dataclass
class SmoothGroup:
    """Layers that share one input, and where their factors go.

    kind: "norm" (``source`` is the norm module's name, ``form`` "gain" or
    "one_plus_gain"), "linear" (``source`` is the previous linear layer; its
    output row ``channel_map[j]`` feeds input channel j) or "input" (one
    layer, factors applied in its quantize step)."""

    kind: str
    members: List[str]
    source: str = ""
    form: str = ""
    channel_map: Optional[Tensor] = None
    alpha: Optional[float] = None  # None: not smoothed
    hadamard_block: int = 0  # > 0: the members rotate their inputs instead
    factors: Optional[Tensor] = None  # s, per input channel of the members
    undo: List[Callable[[], None]] = field(default_factory=list, repr=False)

    def describe(self) -> dict:
        s = self.factors
        return {"kind": self.kind, "source": self.source or None, "alpha": self.alpha,
                "factor_min": None if s is None else float(s.min()),
                "factor_max": None if s is None else float(s.max()),
                "hadamard_block": self.hadamard_block}


class _Stop(Exception):
    """Ends a probing forward pass once nothing more can be learnt from it."""


def _run(model: nn.Module, batch) -> object:
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def probe_batch(batch, tokens: int = PROBE_ROWS):
    """``batch`` cut to its first ``tokens`` positions when it is (or holds,
    in a tuple, list or dict) integer tensors [B, T] of one length T (token
    ids and their masks), else ``batch`` itself: every probe runs the model on
    it, and only the first PROBE_ROWS rows of each input are compared."""
    parts = (list(batch.values()) if isinstance(batch, dict)
             else list(batch) if isinstance(batch, (tuple, list)) else [batch])
    ids = [t for t in parts if isinstance(t, Tensor) and t.dim() == 2
           and not t.is_floating_point() and not t.is_complex()]
    if not ids or len({t.shape[1] for t in ids}) != 1 or ids[0].shape[1] <= tokens:
        return batch

    def cut(t):
        return t[:, :tokens] if any(t is i for i in ids) else t
    if isinstance(batch, dict):
        return {k: cut(v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(cut(v) for v in batch)
    return cut(batch)


def _rows(x: Tensor, n: int = PROBE_ROWS) -> Tensor:
    return x.detach().reshape(-1, x.shape[-1])[:n].float().clone()


def _is_norm(module: nn.Module, linears: set) -> bool:
    w = module._parameters.get("weight") if hasattr(module, "_parameters") else None
    b = module._parameters.get("bias")
    return (id(module) not in linears and isinstance(w, Tensor) and w.dim() == 1
            and (b is None or (isinstance(b, Tensor) and b.shape == w.shape)))


def _channel_map(base: Tensor, probed: Tensor, log_r: Tensor, step: float) -> Optional[Tensor]:
    """The map j -> i such that probed[:, j] = base[:, j] * exp(log_r[i]) for
    every row (up to float rounding), or None. A channel that is 0 on every
    probed row, before and after (a ReLU unit that never fired), maps to -1:
    allowed only where the others map one to one and the two layers have as
    many channels as each other, so that it must be one of the rows left."""
    mag = base.abs()
    big = mag > 1e-4 * mag.amax(1, keepdim=True).clamp_min(1e-30)
    alive = big.any(0)
    dead = ~alive
    if dead.any() and (probed[:, dead] != 0).any() or not alive.any():
        return None
    ratio = torch.where(big, probed / torch.where(big, base, torch.ones_like(base)),
                        torch.full_like(base, math.nan))
    ratio = ratio[:, alive].nanmedian(0).values
    if not (ratio > 0).all():
        return None
    idx = torch.round(torch.log(ratio.double()) / step).long() - 1
    if idx.min() < 0 or idx.max() >= log_r.numel():
        return None
    if ((torch.log(ratio.double()) - log_r[idx]).abs() > step / 4).any():
        return None
    expect = base[:, alive] * torch.exp(log_r[idx]).float()
    tol = 1e-3 * expect.abs() + 1e-5 * mag.amax(1, keepdim=True)
    if ((probed[:, alive] - expect).abs() > tol).any():
        return None
    if dead.any() and (base.shape[1] != log_r.numel() or idx.unique().numel() != idx.numel()):
        return None
    out = torch.full((base.shape[1],), -1, dtype=torch.long)
    out[alive] = idx
    return out


def find_groups(model: nn.Module, layers: Dict[str, nn.Module], batch) -> List[SmoothGroup]:
    """The smoothing groups of ``layers`` (name -> linear module, each module
    once), from the model's behaviour on ``batch``. Every layer is in exactly
    one group."""
    linears = {id(m): n for n, m in layers.items()}
    norm_out: Dict[int, Tuple[str, Tensor]] = {}  # id(output) -> (norm name, output)
    feeds: Dict[str, str] = {}  # linear -> norm whose output it read
    base: Dict[str, Tensor] = {}
    calls: Dict[str, int] = {}
    order: List[str] = []
    handles = []

    def norm_hook(name):
        def hook(mod, args, out):
            if isinstance(out, Tensor) and out.dim() >= 1 and out.shape[-1] == mod.weight.numel():
                norm_out[id(out)] = (name, out)
        return hook

    def linear_hook(name):
        def hook(mod, args):
            if not args or not isinstance(args[0], Tensor):
                return
            calls[name] = calls.get(name, 0) + 1
            if calls[name] == 1:
                order.append(name)
                base[name] = _rows(args[0])
            hit = norm_out.get(id(args[0]))
            if hit is not None and hit[1] is args[0]:
                feeds[name] = hit[0]
        return hook

    try:
        for name, m in model.named_modules():
            if _is_norm(m, set(linears)):
                handles.append(m.register_forward_hook(norm_hook(name)))
        for name, m in layers.items():
            handles.append(m.register_forward_pre_hook(linear_hook(name)))
        with torch.no_grad():
            _run(model, batch)
    finally:
        for h in handles:
            h.remove()
        norm_out.clear()
    once = [n for n in order if calls[n] == 1]  # a module called twice is left alone

    # Linear -> linear: scale A's output rows by distinct factors r_i and find
    # the later layers whose input channels change by exactly some r_i.
    pairs: Dict[str, Tuple[str, Tensor]] = {}  # B -> (A, channel map)
    for a in once:
        mod = layers[a]
        if not isinstance(mod, nn.Linear):
            continue
        n_out = mod.out_features
        step = math.log(2.0) / (n_out + 1)
        log_r = torch.arange(1, n_out + 1, dtype=torch.float64) * step
        r = torch.exp(log_r).float()
        found: Dict[str, Tensor] = {}
        later = once[once.index(a) + 1:]

        def probe_hook(name):
            def hook(m, args):
                x = _rows(args[0])
                if torch.equal(x, base[name]):
                    return
                cmap = _channel_map(base[name], x, log_r, step)
                if cmap is None:
                    raise _Stop
                found[name] = cmap
            return hook

        saved_w = mod.weight.detach().clone()
        saved_b = None if mod.bias is None else mod.bias.detach().clone()
        hs = [layers[n].register_forward_pre_hook(probe_hook(n)) for n in later]
        try:
            with torch.no_grad():
                mod.weight.mul_(r.to(mod.weight.dtype)[:, None])
                if saved_b is not None:
                    mod.bias.mul_(r.to(mod.bias.dtype))
                try:
                    _run(model, batch)
                except _Stop:
                    pass
        finally:
            for h in hs:
                h.remove()
            with torch.no_grad():
                mod.weight.copy_(saved_w)
                if saved_b is not None:
                    mod.bias.copy_(saved_b)
        if len(found) == 1:
            (b, cmap), = found.items()
            if b not in feeds and b not in pairs:
                pairs[b] = (a, cmap)

    groups: Dict[str, SmoothGroup] = {}
    out: List[SmoothGroup] = []
    for name in layers:
        if name in feeds:
            g = groups.get(feeds[name])
            if g is None:
                g = groups[feeds[name]] = SmoothGroup("norm", [], source=feeds[name])
                out.append(g)
            g.members.append(name)
        elif name in pairs:
            a, cmap = pairs[name]
            out.append(SmoothGroup("linear", [name], source=a, channel_map=cmap))
        else:
            out.append(SmoothGroup("input", [name]))
    return out


def smoothing_factors(act_absmax: Tensor, weights: Sequence[Tensor], alpha: float,
                      channel_map: Optional[Tensor] = None, n_sources: int = 0) -> Tensor:
    """s per input channel: ``max|X_j|^alpha / max|W_j|^(1 - alpha)`` over the
    weights ``[N, K]`` that read the input, normalised to a geometric mean of
    1 and clamped. Channels with no activation (or no weight) get the factor
    their neighbours' extremes allow, never a division by 0. With a
    channel_map (input j is output row map[j] of the previous layer, -1: not
    known) the factors are shared by the channels of one row (maxima over
    them), and channels of no known row get 1."""
    ax = act_absmax.double()
    aw = torch.stack([w.detach().abs().amax(0) for w in weights]).amax(0).double()
    if channel_map is not None:
        known = channel_map >= 0
        cm = channel_map[known]
        ax = torch.zeros(n_sources, dtype=torch.float64).scatter_reduce(0, cm, ax[known], "amax")
        aw = torch.zeros(n_sources, dtype=torch.float64).scatter_reduce(0, cm, aw[known], "amax")
    floor_x = ax[ax > 0].min() if (ax > 0).any() else torch.tensor(1.0, dtype=torch.float64)
    floor_w = aw[aw > 0].min() if (aw > 0).any() else torch.tensor(1.0, dtype=torch.float64)
    s = ax.clamp_min(floor_x).pow(alpha) / aw.clamp_min(floor_w).pow(1.0 - alpha)
    s = s / torch.exp(torch.log(s).mean())
    s = s.clamp(1.0 / _FACTOR_RANGE, _FACTOR_RANGE).float()
    if channel_map is None:
        return s
    return torch.where(channel_map >= 0, s[channel_map.clamp_min(0)], torch.ones(()))


def _group_weights(model: nn.Module, g: SmoothGroup) -> List[Tensor]:
    return [float_weight_and_bias(model.get_submodule(n))[0].detach().float() for n in g.members]


def _fake_quant_weight(w: Tensor) -> Tensor:
    scale, zp = ops.choose_qparams(w, "symmetric", axis=0)
    return ops.dequantize(ops.quantize(w, scale, zp, "symmetric", axis=0), scale, zp, axis=0)


def _fake_quant_rows(x: Tensor, mode: str, granularity: str, lo: float, hi: float) -> Tensor:
    if granularity == "per_token":
        q, s, z = ops.quantize_per_token(x, mode)
        return ops.dequantize(q, s, z)
    scale, zp = ops.choose_qparams(torch.tensor([lo, hi], dtype=torch.float32), mode)
    return ops.dequantize(ops.quantize(x, scale, zp, mode), scale, zp)


def layer_errors(rows: Tensor, weights: Sequence[Tensor], s: Optional[Tensor], modes: Sequence[str],
                 granularity: str, ch_lo: Tensor, ch_hi: Tensor,
                 hadamard_block: int = 0) -> Dict[str, List[float]]:
    """Per mode, per weight: the output error of the quantized layer on
    ``rows`` (squared error over the float output's power), inputs divided
    by s (None: not smoothed) or rotated (``hadamard_block``). The
    per-tensor range is calibration's per-channel range divided by s (for
    rotated inputs: pass the rotated range as every channel's)."""
    x = rows if s is None else rows / s
    if hadamard_block:
        x = reference.hadamard_rows(x, hadamard_block)
    lo = float((ch_lo if s is None else ch_lo / s).min())
    hi = float((ch_hi if s is None else ch_hi / s).max())
    out: Dict[str, List[float]] = {}
    x_q = {m: _fake_quant_rows(x, m, granularity, lo, hi) for m in modes}
    for w in weights:
        ref = rows @ w.t()
        power = float(ref.double().pow(2).mean()) or 1.0
        w_s = w if s is None else w * s
        if hadamard_block:
            w_s = rotated_weight(w_s, hadamard_block)
        w_q = _fake_quant_weight(w_s)
        for m in modes:
            err = float((x_q[m] @ w_q.t() - ref).double().pow(2).mean()) / power
            out.setdefault(m, []).append(err)
    return out


def choose_rotation(rows: Tensor, weights: Sequence[Tensor], modes: Sequence[str],
                    granularity: str, best_errors: Dict[str, List[float]],
                    rotated_range: Tuple[float, float] = (0.0, 0.0)) -> int:
    """The Hadamard block for these layers (the largest power of two up to
    2048 dividing K) when rotating their inputs gives a smaller summed layer
    output error than ``best_errors`` (the chosen alpha's), else 0.
    ``rotated_range``: per tensor, calibration's range of the rotated inputs."""
    block = largest_hadamard_block(rows.shape[-1])
    if not block or (granularity == "per_tensor" and not math.isfinite(rotated_range[0])):
        return 0
    lo = rows.new_full((rows.shape[-1],), rotated_range[0])
    hi = rows.new_full((rows.shape[-1],), rotated_range[1])
    rot = layer_errors(rows, weights, None, modes, granularity, lo, hi, hadamard_block=block)

    def total(errs):
        return sum(min(errs[m][i] for m in modes) for i in range(len(weights)))
    return block if total(rot) < total(best_errors) else 0


def choose_alpha(rows: Tensor, act_absmax: Tensor, ch_lo: Tensor, ch_hi: Tensor,
                 weights: Sequence[Tensor], modes: Sequence[str], granularity: str,
                 alphas: Sequence[Optional[float]], channel_map: Optional[Tensor] = None,
                 n_sources: int = 0) -> Tuple[Optional[float], Dict[str, List[float]]]:
    """The alpha (None: no smoothing) with the smallest summed layer output
    error, each layer counted in its better mode when several are allowed
    (act_mode="auto"); and that alpha's errors. Ties keep the earlier alpha."""
    best = None
    for alpha in alphas:
        s = (None if alpha is None else
             smoothing_factors(act_absmax, weights, alpha, channel_map, n_sources))
        errs = layer_errors(rows, weights, s, modes, granularity, ch_lo, ch_hi)
        total = sum(min(errs[m][i] for m in modes) for i in range(len(weights)))
        if best is None or total < best[0]:
            best = (total, alpha, errs)
    return best[1], best[2]


# ---------------------------------------------------------------------------
# folding


def _fold_norm(model: nn.Module, g: SmoothGroup, s: Tensor, norm_input: Tensor) -> bool:
    """Divides the norm's output by s through its parameters, in the form
    that reproduces ``norm(x) / s`` on its recorded input; False (and the
    norm unchanged) when no form does."""
    norm = model.get_submodule(g.source)
    w = norm.weight
    b = getattr(norm, "bias", None)
    b = b if isinstance(b, Tensor) else None
    saved_w, saved_b = w.detach().clone(), None if b is None else b.detach().clone()
    with torch.no_grad():
        want = norm(norm_input).float() / s
        for form in ("gain", "one_plus_gain"):
            if form == "gain":
                w.copy_((saved_w.float() / s).to(w.dtype))
            else:
                w.copy_(((1.0 + saved_w.float()) / s - 1.0).to(w.dtype))
            if b is not None:
                b.copy_((saved_b.float() / s).to(b.dtype))
            got = norm(norm_input).float()
            tol = 1e-4 * want.abs().amax(-1, keepdim=True).clamp_min(1e-30) + 1e-4 * want.abs()
            if got.shape == want.shape and ((got - want).abs() <= tol).all():
                g.form = form

                def undo(w=w, b=b, saved_w=saved_w, saved_b=saved_b):
                    with torch.no_grad():
                        w.copy_(saved_w)
                        if b is not None:
                            b.copy_(saved_b)
                g.undo.append(undo)
                return True
        w.copy_(saved_w)
        if b is not None:
            b.copy_(saved_b)
    return False


def _scale_columns(model: nn.Module, name: str, s: Tensor, g: SmoothGroup) -> None:
    """Multiplies the layer's weight columns (input channels) by s."""
    mod = model.get_submodule(name)
    saved = mod.weight.detach().clone()
    with torch.no_grad():
        if isinstance(mod, nn.Linear):
            mod.weight.copy_((saved.float() * s).to(saved.dtype))
        else:  # Conv1D: weight [in, out]
            mod.weight.copy_((saved.float() * s[:, None]).to(saved.dtype))

    def undo():
        with torch.no_grad():
            mod.weight.copy_(saved)
    g.undo.append(undo)


def _scale_rows(model: nn.Module, name: str, r: Tensor, g: SmoothGroup) -> None:
    """Multiplies the layer's output rows (and bias) by r."""
    mod = model.get_submodule(name)
    saved_w = mod.weight.detach().clone()
    saved_b = None if mod.bias is None else mod.bias.detach().clone()
    with torch.no_grad():
        mod.weight.copy_((saved_w.float() * r[:, None]).to(saved_w.dtype))
        if saved_b is not None:
            mod.bias.copy_((saved_b.float() * r).to(saved_b.dtype))

    def undo():
        with torch.no_grad():
            mod.weight.copy_(saved_w)
            if saved_b is not None:
                mod.bias.copy_(saved_b)
    g.undo.append(undo)


def _inputs_and_output(model: nn.Module, names: Sequence[str], batch):
    """({module name: its first input's first rows}, the model's outputs) of
    one forward pass on ``batch``."""
    got: Dict[str, Tensor] = {}
    handles = []
    for n in set(names):
        def hook(mod, args, n=n):
            if n not in got and args and isinstance(args[0], Tensor):
                got[n] = _rows(args[0])
        handles.append(model.get_submodule(n).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            out = _flat_outputs(_run(model, batch))
    finally:
        for h in handles:
            h.remove()
    return got, out


def _flat_outputs(out) -> List[Tensor]:
    if isinstance(out, Tensor):
        return [out.detach().float()]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat_outputs(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _flat_outputs(v)]
    return []


def _close(a: List[Tensor], b: List[Tensor], rtol: float = 1e-3) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return False
        if x.numel() and (x - y).abs().max() > rtol * y.abs().max().clamp_min(1e-30):
            return False
    return True


def fold(model: nn.Module, groups: List[SmoothGroup], batch) -> List[SmoothGroup]:
    """Folds every "norm" and "linear" group that has factors into the model;
    a fold that does not reproduce the float model's behaviour on ``batch`` is
    undone and its group becomes "input" groups (one per member). Returns the
    groups as they end up."""
    folded = [n for g in groups if g.factors is not None and g.kind != "input"
              for n in g.members]
    norms = [g.source for g in groups if g.kind == "norm" and g.factors is not None]
    seen, before = _inputs_and_output(model, folded + norms, batch)
    for g in groups:
        if g.factors is None or g.kind == "input":
            continue
        if g.kind == "norm":
            if not _fold_norm(model, g, g.factors, seen[g.source]):
                g.kind = "input"
                continue
        else:
            cmap = g.channel_map
            n_src = model.get_submodule(g.source).out_features
            known = cmap >= 0
            r = torch.ones(n_src).scatter(0, cmap[known], 1.0 / g.factors[known])
            _scale_rows(model, g.source, r, g)
        for n in g.members:
            _scale_columns(model, n, g.factors, g)

    # Check: each folded layer now sees its old input divided by s, and the
    # model's output is unchanged.
    after_in, after = _inputs_and_output(model, folded, batch)
    undone = False
    for g in groups:
        if g.kind == "input" or g.factors is None:
            continue
        if not all(_close([after_in[n] * g.factors], [seen[n]]) for n in g.members):
            for u in reversed(g.undo):
                u()
            g.undo.clear()
            g.kind = "input"
            undone = True
    if undone:  # the output is checked with what remains folded
        after = _inputs_and_output(model, [], batch)[1]
    if not _close(after, before):
        for g in groups:
            for u in reversed(g.undo):
                u()
            g.undo.clear()
            if g.kind != "input":
                g.kind = "input"
    out: List[SmoothGroup] = []
    for g in groups:
        if g.kind == "input" and len(g.members) > 1:
            out.extend(SmoothGroup("input", [n], alpha=g.alpha, factors=g.factors)
                       for n in g.members)
        else:
            if g.kind == "input":
                g.source, g.channel_map = "", None
            out.append(g)
    return out
