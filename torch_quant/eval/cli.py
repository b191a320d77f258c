"""Accuracy of a model in fp32 and W8A8 modes (docs/evaluation.md).

    python -m torch_quant.eval                          # SmolLM2-135M on Jane Austen
    python -m torch_quant.eval --model gemma3-270m      # Gemma 3 270M (make eval-data)
    python -m torch_quant.eval --model relu-digits      # a ReLU MLP trained now (test accuracy)
    python -m torch_quant.eval --modes all              # ours and the peers (peers.py)
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
import json
import math
import os
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from .digits import run_digits
from .inputs import (DEFAULT_MODEL, MODELS, bos_token, calibration_batches, load_model,
                     load_texts)
from .modes import (ALL_MODES, DEFAULT_MODES, MODES, available_modes, how_made,
                    quantized_copies)
from .peers import PEERS
from .report import Result, Run, format_table, plot, smoothing_summary
from .windows import EvalError, _dist, evaluate, perplexity, weight_bytes, windows

__all__ = ["MODES", "MODELS", "windows", "perplexity", "evaluate", "main"]

# ---------------------------------------------------------------------------
# command line


def _smoothing(text: str) -> Union[str, float]:
    """--smoothing's value as QuantConfig takes it: "auto", "off" or an alpha."""
    if text in ("auto", "off"):
        return text
    try:
        alpha = float(text)
    except ValueError:
        alpha = math.nan
    if not 0.0 <= alpha <= 1.0:
        raise argparse.ArgumentTypeError(f"must be auto, off or an alpha in [0, 1], got {text!r}")
    return alpha


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
                   help=f"comma-separated, from: {', '.join([*MODES, *PEERS])}; or 'all' "
                        f"({','.join(ALL_MODES)}) alone (default: {','.join(DEFAULT_MODES)}). "
                        "A peer whose library is missing is left out with a note")
    p.add_argument("--compile", action="store_true",
                   help="run every mode's model under torch.compile (the warm-up window "
                        "compiles; the timed windows do not)")
    p.add_argument("--skip", default=None,
                   help="comma-separated module names or globs left in float (default: lm_head "
                        "for language models, none for relu-digits; '' for none)")
    p.add_argument("--smoothing", default="auto", type=_smoothing,
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
    if args.modes == ["all"]:
        args.modes = list(ALL_MODES)
    unknown = [m for m in args.modes if m not in MODES and m not in PEERS]
    if unknown or not args.modes:
        raise EvalError(f"--modes: unknown mode(s) {', '.join(unknown) or '(none given)'}; "
                        f"choose from {', '.join([*MODES, *PEERS])}, or all alone")
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
    if args.skip is None:
        args.skip = "" if args.model == "relu-digits" else "lm_head"
    args.skip = [s.strip() for s in args.skip.split(",") if s.strip()]
    return args


def run(args: argparse.Namespace, log=print) -> dict:
    rank, world = _dist()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.modes = available_modes(args.modes, log)
    if not args.modes:
        raise EvalError("--modes: none of the modes can run here (see the notes above)")
    if args.model == "relu-digits":
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
        if calib_ids.numel() < args.calibration_tokens and any(MODES.get(m) for m in args.modes):
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
    # the fp32 row's model is the reference (compiled too with --compile)
    reference = models["fp32"][0] if "fp32" in models else model
    scores = evaluate({m: mm for m, (mm, _) in models.items()}, ids, args.seq_len, args.stride,
                      bos, reference=reference, progress=show)
    results = []
    for mode, (m, qsecs) in models.items():
        s = scores[mode]
        quant = mode != "fp32"
        results.append(Result(
            mode, s.seconds, s.tokens_in / max(s.seconds, 1e-9), weight_bytes(m),
            perplexity=math.exp(s.nll / s.count), nll_sum=s.nll, tokens_scored=s.count,
            kl_divergence=s.kl / s.count if quant else None,
            top1_agreement=s.agree / s.count if quant else None,
            **how_made(mode, m, qsecs, args)))
    facts = {"model": model_desc, "corpus": corpus_desc, "tokens": int(ids.numel()),
             "bos": bos is not None, "seq_len": args.seq_len, "stride": args.stride,
             "windows": len(wins), "calibration_tokens": int(sum(b.numel() for b in batches)),
             "world_size": world, "threads": torch.get_num_threads(), "compiled": args.compile}
    return finish(args, Run(facts, results, f"{model_desc}\n{corpus_desc}, {ids.numel()} tokens"),
                  log)


def finish(args, run_: Run, log) -> dict:
    """Prints the table (rank 0), writes the JSON and the plot; the JSON's content."""
    results, out = run_.results, run_.to_json()
    if _dist()[0] == 0:
        log("")
        log(format_table(results))
        for r in results:
            if r.layers:
                log(f"  {r.mode}: smoothing {r.smoothing}: {smoothing_summary(r.layers)}")
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))
        if args.plot:
            plot(results, args.plot, run_.title)
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
