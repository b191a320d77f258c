"""``python -m torch_quant.eval --model relu-digits``: a model where the choice
of activation mode shows.

No language model we evaluate uses ReLU, whose outputs are one-sided: half of
a symmetric int8 range is never used there. This task trains, at run time
and with a fixed seed, a small ReLU MLP (64 -> 256 -> 256 -> 10) on
scikit-learn's bundled digits data set (1797 8x8 images, no download) and
reports its test accuracy in fp32 and in each W8A8 mode, with the KL
divergence and top-1 agreement of the class distribution from fp32's.
Calibration uses training images only; the test images are never seen
before they are scored.
"""

from __future__ import annotations

import time
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..conversion.report import quantization_report
from .modes import how_made, quantized_copies
from .report import Result, Run
from .windows import EvalError, weight_bytes

__all__ = ["digits_data", "train_digits_mlp", "run_digits"]

TRAIN = 1200  # of 1797 images; the other 597 are the test set
REPEATS = 21  # timed passes over the test set per mode (the median is reported)


def digits_data(seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): pixel values scaled to [0, 1], a
    fixed random split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise EvalError("--model relu-digits needs scikit-learn: pip install scikit-learn "
                        "(or the eval extras: pip install -e '.[eval]')") from None
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    tr, te = perm[:TRAIN], perm[TRAIN:]
    return x[tr], y[tr], x[te], y[te]


def train_digits_mlp(x: torch.Tensor, y: torch.Tensor, seed: int = 0, steps: int = 300
                     ) -> nn.Sequential:
    """The ReLU MLP, trained full-batch with Adam (a few seconds on a CPU)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    with torch.no_grad():
        for p in model.parameters():  # a seeded init that does not touch the global RNG
            p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) / p.shape[-1] ** 0.5)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


def run_digits(args, log) -> Run:
    x_tr, y_tr, x_te, y_te = digits_data()
    t0 = time.perf_counter()
    model = train_digits_mlp(x_tr, y_tr)
    log(f"model: relu-digits, 64-256-256-10 ReLU MLP trained in {time.perf_counter() - t0:.1f} s "
        f"({TRAIN} training images)\ncorpus: scikit-learn digits, {x_te.shape[0]} test images; "
        f"calibration: the training images")
    calib = list(x_tr.split(256))
    with torch.inference_mode():
        ref = torch.log_softmax(model(x_te), -1)
    results: List[Result] = []
    for mode, (m, qsecs) in quantized_copies(model, args, calib, log).items():
        with torch.inference_mode():
            m(x_te[:8])  # warm-up
            times = []
            for _ in range(REPEATS):  # a forward pass takes well under a millisecond
                t0 = time.perf_counter()
                logp = torch.log_softmax(m(x_te), -1)
                times.append(time.perf_counter() - t0)
            secs = sorted(times)[REPEATS // 2]
        quant = mode != "fp32"
        results.append(Result(
            mode, secs, x_te.shape[0] / max(secs, 1e-9), weight_bytes(m),
            accuracy=float((logp.argmax(-1) == y_te).float().mean()),
            kl_divergence=float((ref.exp() * (ref - logp)).sum(-1).mean()) if quant else None,
            top1_agreement=float((ref.argmax(-1) == logp.argmax(-1)).float().mean())
            if quant else None, **how_made(mode, m, qsecs, args)))
        if mode.startswith("w8a8-auto"):
            picks = ", ".join(f"{r.name}: {r.act_mode}"
                              for r in quantization_report(getattr(m, "_orig_mod", m)))
            log(f"  {mode} picked {picks}")
    facts = {"model": "relu-digits", "corpus": "scikit-learn digits (test split)",
             "test_rows": int(x_te.shape[0]), "train_rows": int(x_tr.shape[0]),
             "threads": torch.get_num_threads(), "compiled": args.compile}
    return Run(facts, results, "relu-digits (64-256-256-10 ReLU MLP), digits test set")
