"""The evaluation's results: one ``Result`` per mode, the table, the
smoothing summary and the plot."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence


from .windows import EvalError




@dataclass
class Result:
    mode: str
    seconds: float
    tokens_per_second: float
    weight_bytes: int
    perplexity: Optional[float] = None  # language models
    nll_sum: Optional[float] = None
    tokens_scored: Optional[int] = None
    accuracy: Optional[float] = None  # classifiers
    kl_divergence: Optional[float] = None  # mean nats per scored token, from fp32
    top1_agreement: Optional[float] = None
    quantize_seconds: Optional[float] = None
    smoothing: Optional[str] = None
    layers: List[dict] = field(default_factory=list)
    peer: Optional[str] = None  # another library's path (peers.py): what it is

    def to_json(self) -> dict:
        out = {k: v for k, v in self.__dict__.items()}
        if self.accuracy is None:
            for k in ("accuracy",):
                out.pop(k)
        else:
            for k in ("perplexity", "nll_sum", "tokens_scored"):
                out.pop(k)
        return out


@dataclass
class Run:
    """One evaluation run: what was evaluated (``facts``: model, corpus,
    tokens, windows, threads...), each mode's result, and the plot's title."""
    facts: dict
    results: List[Result]
    title: str

    def to_json(self) -> dict:
        """The JSON file's content: the facts, then every mode's result."""
        return {**self.facts, "results": [r.to_json() for r in self.results]}


def _fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(results: Sequence[Result]) -> str:
    classifier = any(r.accuracy is not None for r in results)
    metric = "accuracy" if classifier else "perplexity"
    base = next((r for r in results if r.mode == "fp32"), None)
    head = ("mode", metric, "vs fp32", "KL vs fp32", "top-1 agree", "seconds",
            "rows/s" if classifier else "tokens/s", "weight MB")
    rows = []
    for r in results:
        if classifier:
            value = f"{100 * r.accuracy:.2f}%"
            delta = ("-" if base is None or r is base
                     else f"{100 * (r.accuracy - base.accuracy):+.2f} pt")
        else:
            value = f"{r.perplexity:.4f}"
            delta = ("-" if base is None or r is base
                     else f"{100 * (r.perplexity / base.perplexity - 1):+.2f}%")
        agree = None if r.top1_agreement is None else 100 * r.top1_agreement
        rows.append((r.mode, value, delta, _fmt(r.kl_divergence, ".5f"),
                     "-" if agree is None else f"{agree:.2f}%", f"{r.seconds:.1f}",
                     f"{r.tokens_per_second:.0f}", f"{r.weight_bytes / 2**20:.1f}"))
    widths = [max(len(c) for c in col) for col in zip(head, *rows)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    notes = [f"{r.mode}: a peer, {r.peer}" for r in results if r.peer]
    return "\n".join([line(head), "  ".join("-" * w for w in widths), *map(line, rows), *notes])


def smoothing_summary(layers: List[dict]) -> str:
    """One line: how the layers were smoothed (kinds, alphas, factor range)."""
    sm = [lay.get("smoothing") for lay in layers]
    if not sm or any(s is None for s in sm):
        return "not smoothed"
    kinds: Dict[str, int] = {}
    for s in sm:
        key = s["kind"] + (" (hadamard)" if s.get("hadamard_block") else
                           "" if s["alpha"] is not None else " (off)")
        kinds[key] = kinds.get(key, 0) + 1
    alphas = sorted(s["alpha"] for s in sm if s["alpha"] is not None)
    if not alphas:
        return "layers: " + ", ".join(f"{v} {k}" for k, v in kinds.items())
    lo = min(s["factor_min"] for s in sm if s["alpha"] is not None)
    hi = max(s["factor_max"] for s in sm if s["alpha"] is not None)
    return (", ".join(f"{v} {k}" for k, v in kinds.items())
            + f"; alpha {alphas[0]:g}..{alphas[-1]:g} (median {alphas[len(alphas) // 2]:g})"
            + f", factors {lo:.3g}..{hi:.3g}")


def plot(results: Sequence[Result], path: str, title: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise EvalError("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classifier = any(r.accuracy is not None for r in results)
    quant = [r for r in results if r.kl_divergence is not None]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    ax = axes[0]
    vals = [100 * r.accuracy if classifier else r.perplexity for r in results]
    # peers' bars in grey, hatched
    bars = ax.bar([r.mode for r in results], vals, color=["#999999" if r.peer else "#4878a8"
                                                          for r in results],
                  hatch=["//" if r.peer else "" for r in results])
    # values on the bars: a peer far off (quantize_dynamic) flattens the others
    ax.bar_label(bars, fmt="%.2f" if classifier else "%.3f", fontsize=7)
    ax.set_ylim(min(vals) * 0.98, max(vals) * 1.01)
    ax.set_ylabel("test accuracy % (higher is better)" if classifier
                  else "perplexity (lower is better)")
    ax.set_title(title, fontsize=8)
    ax.tick_params(axis="x", rotation=30, labelsize=7)
    ax = axes[1]
    bars = ax.bar([r.mode for r in quant], [r.kl_divergence for r in quant],
                  color=["#999999" if r.peer else "#a85848" for r in quant],
                  hatch=["//" if r.peer else "" for r in quant])
    ax.bar_label(bars, fmt="%.4f", fontsize=7)
    if quant and min(r.kl_divergence for r in quant) > 0:
        ax.set_yscale("log")  # KL spans decades between modes
    ax.set_ylabel("mean KL divergence from fp32 (nats)")
    ax.tick_params(axis="x", rotation=30, labelsize=7)
    ax = axes[2]
    for r in quant:
        util = [lay["act_range_utilization"] for lay in r.layers]  # ours only
        if util and all(u is not None for u in util):
            ax.plot([100 * u for u in util], label=r.mode)
    ax.set_xlabel("quantized layer (model order)")
    ax.set_ylabel("activation range utilization %")
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
