"""Perplexity over windows (docs/evaluation.md, "Windows"): the window
plan, each mode's scores on the same windows (NLL, KL from fp32, top-1
agreement, time), all-reduced across torchrun ranks."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn



class EvalError(Exception):
    """A bad argument or missing input: printed as one line, exit status 2."""




def windows(n_tokens: int, seq_len: int, stride: int,
            bos: bool = False) -> List[Tuple[int, int, int]]:
    """(begin, end, n_scored) of every window: text tokens [begin, end) go in
    (after a BOS token when ``bos``), the last n_scored of them are scored.
    Together they score every token once (without BOS: all but the first,
    which has no context), and every scored token has context in its window."""
    if seq_len < 2:
        raise EvalError(f"--seq-len must be at least 2, got {seq_len}")
    if not 1 <= stride <= seq_len:
        raise EvalError(f"--stride must be in [1, --seq-len={seq_len}], got {stride}")
    room = seq_len - 1 if bos else seq_len  # text tokens per window
    out = []
    scored_to = 0 if bos else 1  # tokens before this index are scored
    begin = 0
    while scored_to < n_tokens:
        end = min(begin + room, n_tokens)
        out.append((begin, end, end - scored_to))
        scored_to = end
        if end == n_tokens:
            break
        # the next window starts `stride` later, but without BOS no later
        # than the last scored token, so that its first new token has context
        begin = min(begin + stride, end if bos else end - 1)
    return out


def _window_input(ids: torch.Tensor, begin: int, end: int, bos: Optional[int]) -> torch.Tensor:
    x = ids[begin:end]
    if bos is not None:
        x = torch.cat([torch.tensor([bos], dtype=ids.dtype), x])
    return x


@dataclass
class Scores:
    """Sums over the scored tokens of one mode."""

    nll: float = 0.0
    count: int = 0
    kl: float = 0.0
    agree: int = 0
    seconds: float = 0.0
    tokens_in: int = 0

    def add(self, other: "Scores") -> None:
        for k in ("nll", "count", "kl", "agree", "seconds", "tokens_in"):
            setattr(self, k, getattr(self, k) + getattr(other, k))


def _dist():
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        return d.get_rank(), d.get_world_size()
    return 0, 1


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x[None])
    return (out.logits if hasattr(out, "logits") else out)[0].float()


def evaluate(models: Dict[str, nn.Module], ids: torch.Tensor, seq_len: int, stride: int,
             bos: Optional[int] = None, reference: Optional[nn.Module] = None,
             progress: bool = False, warmup: bool = True) -> Dict[str, Scores]:
    """Scores of every model on the windows of ``ids`` ([N] text tokens), the
    models taking turns window by window. With ``reference`` (the fp32
    model), also each model's KL divergence from it and top-1 agreement.
    Each model first runs one untimed window when ``warmup``. With
    torch.distributed initialized: this rank's share of the windows, reduced."""
    rank, world = _dist()
    wins = windows(ids.numel(), seq_len, stride, bos is not None)[rank::world]
    scores = {name: Scores() for name in models}
    with torch.inference_mode():
        if warmup and wins:
            b, e, _ = wins[0]
            for m in models.values():
                _logits(m, _window_input(ids, b, e, bos))
        it = wins
        if progress and rank == 0:
            from tqdm.auto import tqdm
            it = tqdm(wins, unit="window", leave=False)
        # the reference first: its distribution is compared with the others'
        order = sorted(models, key=lambda n: models[n] is not reference)
        for begin, end, n_scored in it:
            x = _window_input(ids, begin, end, bos)
            target = x[x.numel() - n_scored:]
            ref_logp = None
            if reference is not None and not any(models[n] is reference for n in order):
                ref_logp = torch.log_softmax(_logits(reference, x)[-n_scored - 1:-1], -1)
            for name in order:
                m = models[name]
                t0 = time.perf_counter()
                logits = _logits(m, x)
                secs = time.perf_counter() - t0
                logp = torch.log_softmax(logits[-n_scored - 1:-1], -1)
                s = Scores(nll=float(F.nll_loss(logp, target, reduction="sum").double()),
                           count=n_scored, seconds=secs, tokens_in=x.numel())
                if m is reference:
                    ref_logp = logp
                elif ref_logp is not None:
                    s.kl = float((ref_logp.exp() * (ref_logp - logp)).sum().double())
                    s.agree = int((ref_logp.argmax(-1) == logp.argmax(-1)).sum())
                scores[name].add(s)
    if world > 1:
        names = list(models)
        t = torch.tensor([[scores[n].nll, scores[n].count, scores[n].kl, scores[n].agree,
                           scores[n].tokens_in] for n in names], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        for n, row in zip(names, t.tolist()):
            sc = scores[n]
            sc.nll, sc.count, sc.kl, sc.agree, sc.tokens_in = (row[0], int(row[1]), row[2],
                                                               int(row[3]), int(row[4]))
    return scores


def perplexity(model: nn.Module, ids: torch.Tensor, seq_len: int, stride: int,
               progress: bool = False, desc: str = "", bos: Optional[int] = None
               ) -> Tuple[float, float, int]:
    """(perplexity, NLL sum, tokens scored) of ids ([N]) under model."""
    s = evaluate({desc or "model": model}, ids, seq_len, stride, bos, progress=progress,
                 warmup=False)[desc or "model"]
    return math.exp(s.nll / s.count), s.nll, s.count


def _tensors(t: torch.Tensor):
    """The plain tensors behind t: a tensor subclass's inner tensors (torchao's
    quantized weights), else t itself."""
    if hasattr(t, "__tensor_flatten__"):
        for name in t.__tensor_flatten__()[0]:
            inner = getattr(t, name)
            if inner is not None:
                yield from _tensors(inner)
    else:
        yield t


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers as held in memory (packed
    weights as packed), shared tensors once; quantize_dynamic's weights,
    which are neither, counted by their int8 values."""
    seen, total = set(), 0
    held = list(model.parameters()) + list(model.buffers())
    if "torch.ao.nn.quantized" in sys.modules:  # else no model holds its modules
        from torch.ao.nn.quantized.modules.linear import LinearPackedParams
        for m in model.modules():
            if isinstance(m, LinearPackedParams):
                held.extend(t for t in m._weight_bias() if t is not None)
    for value in held:
        for t in _tensors(value):
            key = (t.data_ptr(), t.numel(), t.dtype)
            if key not in seen:
                seen.add(key)
                total += t.numel() * t.element_size()
    return total
