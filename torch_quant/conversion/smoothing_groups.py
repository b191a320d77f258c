"""Where smoothing factors can go, found from the model's behaviour, never
from names (docs/conversion.md, "Quantize a model"): the groups of linear
layers that share an input and the norm or previous linear layer that
produces it (``find_groups``, by probing the model on a calibration batch),
and ``fold``, which moves the factors there and checks on the batch that the
model's outputs did not change."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .running import flat_outputs, outputs_close, run_model

__all__ = ["PROBE_ROWS", "SmoothGroup", "find_groups", "fold", "probe_batch"]

PROBE_ROWS = 64  # rows of each layer's input compared when probing


@dataclass(frozen=True)
class SmoothGroup:
    """Layers that share one input, where their factors go, and (once chosen)
    how they are smoothed. Immutable: a choice or a fold makes a new group
    (``dataclasses.replace``).

    kind: "norm" (``source`` is the norm module's name; ``form``, once folded,
    "gain" or "one_plus_gain"), "linear" (``source`` is the previous linear
    layer; its output row ``channel_map[j]`` feeds input channel j) or "input"
    (one layer, factors applied in its quantize step)."""

    kind: str
    members: Tuple[str, ...]
    source: str = ""
    form: str = ""
    channel_map: Optional[Tensor] = None
    alpha: Optional[float] = None  # None: not smoothed
    hadamard_block: int = 0  # > 0: the members rotate their inputs instead
    factors: Optional[Tensor] = None  # s, per input channel of the members

    def describe(self) -> dict:
        s = self.factors
        return {"kind": self.kind, "source": self.source or None, "alpha": self.alpha,
                "factor_min": None if s is None else float(s.min()),
                "factor_max": None if s is None else float(s.max()),
                "hadamard_block": self.hadamard_block}


class _Stop(Exception):
    """Ends a probing forward pass once nothing more can be learnt from it."""


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
            run_model(model, batch)
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
                    run_model(model, batch)
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

    norm_members: Dict[str, List[str]] = {}  # norm -> the layers reading its output
    for name in layers:
        if name in feeds:
            norm_members.setdefault(feeds[name], []).append(name)
    out: List[SmoothGroup] = []
    for name in layers:
        if name in feeds:
            members = norm_members[feeds[name]]
            if members[0] == name:  # the group, where its first member is
                out.append(SmoothGroup("norm", tuple(members), source=feeds[name]))
        elif name in pairs:
            a, cmap = pairs[name]
            out.append(SmoothGroup("linear", (name,), source=a, channel_map=cmap))
        else:
            out.append(SmoothGroup("input", (name,)))
    return out


# ---------------------------------------------------------------------------
# folding


Undo = Callable[[], None]


def _restorer(pairs: Sequence[Tuple[Tensor, Tensor]]) -> Undo:
    """A function that copies each saved tensor back into its parameter."""
    def undo():
        with torch.no_grad():
            for param, saved in pairs:
                param.copy_(saved)
    return undo


def _fold_norm(model: nn.Module, source: str, s: Tensor,
               norm_input: Tensor) -> Optional[Tuple[str, Undo]]:
    """Divides the norm's output by s through its parameters, in the form
    that reproduces ``norm(x) / s`` on its recorded input: (the form, how to
    undo it); None (and the norm unchanged) when no form does."""
    norm = model.get_submodule(source)
    params = [t for t in (norm.weight, getattr(norm, "bias", None)) if isinstance(t, Tensor)]
    saved = [t.detach().clone() for t in params]
    undo = _restorer(list(zip(params, saved)))
    w, saved_w = params[0], saved[0]
    with torch.no_grad():
        want = norm(norm_input).float() / s
        for form in ("gain", "one_plus_gain"):
            if form == "gain":
                w.copy_((saved_w.float() / s).to(w.dtype))
            else:
                w.copy_(((1.0 + saved_w.float()) / s - 1.0).to(w.dtype))
            if len(params) == 2:
                params[1].copy_((saved[1].float() / s).to(params[1].dtype))
            got = norm(norm_input).float()
            tol = 1e-4 * want.abs().amax(-1, keepdim=True).clamp_min(1e-30) + 1e-4 * want.abs()
            if got.shape == want.shape and ((got - want).abs() <= tol).all():
                return form, undo
    undo()
    return None


def _scale_columns(model: nn.Module, name: str, s: Tensor) -> Undo:
    """Multiplies the layer's weight columns (input channels) by s."""
    mod = model.get_submodule(name)
    saved = mod.weight.detach().clone()
    with torch.no_grad():
        if isinstance(mod, nn.Linear):
            mod.weight.copy_((saved.float() * s).to(saved.dtype))
        else:  # Conv1D: weight [in, out]
            mod.weight.copy_((saved.float() * s[:, None]).to(saved.dtype))
    return _restorer([(mod.weight, saved)])


def _scale_rows(model: nn.Module, name: str, r: Tensor) -> Undo:
    """Multiplies the layer's output rows (and bias) by r."""
    mod = model.get_submodule(name)
    params = [t for t in (mod.weight, mod.bias) if t is not None]
    saved = [t.detach().clone() for t in params]
    with torch.no_grad():
        mod.weight.copy_((saved[0].float() * r[:, None]).to(saved[0].dtype))
        if len(params) == 2:
            mod.bias.copy_((saved[1].float() * r).to(saved[1].dtype))
    return _restorer(list(zip(params, saved)))


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
            out = flat_outputs(run_model(model, batch))
    finally:
        for h in handles:
            h.remove()
    return got, out


def _fold_all(model: nn.Module, groups: List[SmoothGroup], seen: Dict[str, Tensor]):
    """Folds every "norm" and "linear" group that has factors: (the groups,
    a norm group that no form fits now "input"; the undo steps in the order
    they were done)."""
    groups = list(groups)
    steps: List[Undo] = []
    for i, g in enumerate(groups):
        if g.factors is None or g.kind == "input":
            continue
        if g.kind == "norm":
            done = _fold_norm(model, g.source, g.factors, seen[g.source])
            if done is None:
                groups[i] = replace(g, kind="input")
                continue
            groups[i] = replace(g, form=done[0])
            steps.append(done[1])
        else:
            cmap = g.channel_map
            n_src = model.get_submodule(g.source).out_features
            known = cmap >= 0
            r = torch.ones(n_src).scatter(0, cmap[known], 1.0 / g.factors[known])
            steps.append(_scale_rows(model, g.source, r))
        steps.extend(_scale_columns(model, n, g.factors) for n in g.members)
    return groups, steps


def _unfold(steps: List[Undo]) -> None:
    # last done, first undone: a layer can be both a group's member (its
    # columns scaled) and another group's source (its rows scaled)
    for u in reversed(steps):
        u()


def fold(model: nn.Module, groups: List[SmoothGroup], batch) -> List[SmoothGroup]:
    """Folds every "norm" and "linear" group that has factors into the model;
    a fold that does not reproduce the float model's behaviour on ``batch`` is
    undone and its group becomes "input" groups (one per member). Returns the
    groups as they end up (new ones; ``groups`` are not changed)."""
    folded = [n for g in groups if g.factors is not None and g.kind != "input"
              for n in g.members]
    norms = [g.source for g in groups if g.kind == "norm" and g.factors is not None]
    seen, before = _inputs_and_output(model, folded + norms, batch)
    while True:
        # Check: each folded layer now sees its old input divided by s. A
        # group that does not is dropped, and the others folded again from
        # the model as it was (undoing one group alone could undo part of
        # another's fold in a layer they share).
        done, steps = _fold_all(model, groups, seen)
        after_in, after = _inputs_and_output(model, folded, batch)
        bad = {i for i, g in enumerate(done) if g.kind != "input" and g.factors is not None
               and not all(outputs_close([after_in[n] * g.factors], [seen[n]])
                           for n in g.members)}
        if not bad:
            break
        _unfold(steps)
        groups = [replace(g, kind="input") if i in bad else g for i, g in enumerate(groups)]
    if not outputs_close(after, before):  # the model's output changed: nothing folded
        _unfold(steps)
        done = [replace(g, kind="input", form="") for g in done]
    out: List[SmoothGroup] = []
    for g in done:
        if g.kind == "input":
            # one group per layer, each keeping the group's choice (its
            # factors, or its rotation), applied in its quantize step
            out.extend(replace(g, members=(n,), source="", form="", channel_map=None)
                       for n in g.members)
        else:
            out.append(g)
    return out
