"""The ``lora`` section: LoRA fine-tuning (peft) on the default eval model,
SmolLM2-135M, quantized by us (every nn.Linear but lm_head, symmetric per
token) against the same LoRA on the fp32 model.

* step time: one training step (forward with labels, backward, AdamW step)
  on a ``batch x seq_len`` window of Pride and Prejudice, adapters on q_proj
  and v_proj (r 8), both variants interleaved, medians reported. Our base is
  int8 and frozen; its backward gives x the gradient through the dequantized
  weight (docs/semantics.md, "Gradients"). Goal: ours <= 1.0x fp32's time.
* learning: the perplexity of the text's first ``eval_tokens`` tokens (those
  ``make eval`` scores) under our quantized model before and after
  ``train_steps`` steps on windows of the rest of the book (held out from the
  evaluation). Goal: it falls.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
from torch import nn

import torch_quant as tq

from .e2e import SkipSection, load_default_model
from .timing import Candidate, Config, Goal, Row, SectionResult, measure, set_ratio


@dataclass
class LoraSizes:
    batch: int = 1
    seq_len: int = 256
    repeat: int = 5  # timed steps of each variant, unless --repeat is given
    train_steps: int = 100
    lr: float = 1e-3
    eval_tokens: int = 8192
    eval_seq_len: int = 512
    eval_stride: int = 256
    r: int = 8


QUICK_SIZES = LoraSizes(batch=1, seq_len=16, repeat=2, train_steps=3, eval_tokens=64,
                        eval_seq_len=32, eval_stride=16)


def lora_model(model: nn.Module, quantized: bool, r: int):
    """A peft LoRA model (q_proj, v_proj) on a copy of ``model``, quantized by
    us first when ``quantized``."""
    import peft
    from torch_quant.lora import register_lora
    m = copy.deepcopy(model)
    config = peft.LoraConfig(target_modules=["q_proj", "v_proj"], r=r, lora_alpha=2 * r,
                             lora_dropout=0.0)
    if quantized:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (no lm_head tie warning: it is skipped)
            tq.quantize_model(m, "symmetric", "per_token", skip="lm_head", progress=False)
        config = register_lora(config)
    return peft.get_peft_model(m, config)


def default_text_ids(tok) -> torch.Tensor:
    from torch_quant.eval.corpus import austen_text
    try:
        text = austen_text("prideprejudice")
    except FileNotFoundError as e:
        raise SkipSection(str(e)) from None
    return torch.tensor(tok(text)["input_ids"])


def section_lora(cfg: Config, sizes: Optional[LoraSizes] = None,
                 load: Optional[Callable] = None,
                 text_ids: Optional[Callable] = None) -> SectionResult:
    """The section; ``load`` () -> (model, tokenizer, description) and
    ``text_ids`` (tokenizer) -> token ids, swappable by a test."""
    sizes = sizes or (QUICK_SIZES if cfg.quick else LoraSizes())
    title = "LoRA fine-tuning (peft): a training step, and what 100 steps learn"
    if importlib.util.find_spec("peft") is None:
        return SectionResult("lora", f"{title}: skipped, peft is not installed "
                             "(pip install 'torch_quant[peft]')", "", [], [])
    try:
        model, tok, desc = (load or load_default_model)()
        ids = (text_ids or default_text_ids)(tok)
    except SkipSection as e:
        return SectionResult("lora", f"{title}: skipped, {e}", "", [], [])
    from torch_quant.eval.inputs import bos_token
    from torch_quant.eval.windows import perplexity
    model.eval()
    eval_ids, train_ids = ids[:sizes.eval_tokens], ids[sizes.eval_tokens:]
    gen = torch.Generator().manual_seed(11)
    span = sizes.seq_len
    if train_ids.numel() <= span:
        raise ValueError(f"lora: the text has {ids.numel()} tokens, too few to train on")

    def batch() -> torch.Tensor:
        starts = torch.randint(0, train_ids.numel() - span, (sizes.batch,), generator=gen)
        return torch.stack([train_ids[s:s + span] for s in starts.tolist()])

    notes: List[str] = []
    with torch.inference_mode(False), torch.enable_grad():
        variants = {"fp32": lora_model(model, False, sizes.r),
                    "ours": lora_model(model, True, sizes.r)}
        opts = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad],
                                     lr=sizes.lr) for k, m in variants.items()}
        losses = {k: [] for k in variants}

        def step(key: str, x: torch.Tensor) -> None:
            m, opt = variants[key], opts[key]
            m.train()
            loss = m(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[key].append(loss.item())

        bos = bos_token(tok) if tok is not None else None

        def ppl() -> float:
            variants["ours"].eval()
            with torch.no_grad():
                return perplexity(variants["ours"], eval_ids, sizes.eval_seq_len,
                                  sizes.eval_stride, bos=bos)[0]

        ppl_before = ppl()
        # the same windows for both variants, one per repetition
        current: dict = {}
        run_cfg = Config(repeat=cfg.repeat if cfg.repeat_given else sizes.repeat,
                         warmup=max(1, cfg.warmup))
        times = measure([Candidate(k, (lambda k=k: step(k, current["x"])),
                                   setup=(lambda k=k: current.update(x=batch()) if k == "fp32"
                                          else None))
                         for k in variants], run_cfg)
        done = len(losses["ours"])
        for _ in range(max(0, sizes.train_steps - done)):
            step("ours", batch())
        ppl_after = ppl()

    rows = {k: Row(f"lora/step/{k}", f"training step, LoRA on {k} base "
                   f"({sizes.batch}x{sizes.seq_len} tokens)", times[k]) for k in variants}
    set_ratio(rows, "ours", "fp32")
    rows["ours"].extra.update(perplexity_before=ppl_before, perplexity_after=ppl_after,
                              steps=len(losses["ours"]), first_loss=losses["ours"][0],
                              last_loss=losses["ours"][-1])
    time_ratio = rows["ours"].median / rows["fp32"].median
    goals = [Goal("lora: training step time, ours (int8 base) / fp32 base", time_ratio, 1.0,
                  op="<="),
             Goal(f"lora: perplexity after / before {len(losses['ours'])} steps (ours)",
                  ppl_after / ppl_before, 1.0, op="<=")]
    notes += [
        f"model: {desc}; {torch.get_num_threads()} threads; adapters on q_proj and v_proj, "
        f"r {sizes.r}, alpha {2 * sizes.r}, AdamW lr {sizes.lr}; ours: every nn.Linear but "
        f"lm_head quantized (symmetric per token, no smoothing)",
        f"perplexity of the first {eval_ids.numel()} tokens (seq-len {sizes.eval_seq_len}, "
        f"stride {sizes.eval_stride}) under ours: {ppl_before:.4f} before, {ppl_after:.4f} "
        f"after {len(losses['ours'])} steps on windows of the rest of the text "
        f"({math.log(ppl_after / ppl_before) * 100:+.2f}% in log)",
        f"training loss, ours: {losses['ours'][0]:.3f} first step, {losses['ours'][-1]:.3f} "
        f"last",
        "ratio = fp32's median step time / ours (> 1: ours faster)",
    ]
    return SectionResult("lora", title, "ratio > 1: ours faster", notes, list(rows.values()),
                         goals, columns=("median ms", "IQR ms", "ratio"))
