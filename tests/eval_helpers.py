"""The tiny language model and the by-hand perplexity shared by the eval
tests (test_eval.py, test_peers.py): no downloads."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
import tokenizers

from torch_quant.eval import cli as tq_eval

TEXT = ("It is a truth universally acknowledged , that a single man in possession of a good "
        "fortune , must be in want of a wife . However little known the feelings or views of "
        "such a man may be on his first entering a neighbourhood , this truth is so well fixed "
        "in the minds of the surrounding families , that he is considered the rightful "
        "property of some one or other of their daughters . ") * 6


def train(model, ids, steps=120, seq=32, seed=0):
    """A few seconds of training on the text, so that the model's weights are
    learned (its perplexity far below the vocabulary size) and quantization
    has something to lose."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, ids.numel() - seq, (8,), generator=g)
        batch = torch.stack([ids[s:s + seq] for s in starts.tolist()])
        opt.zero_grad()
        model(batch, labels=batch).loss.backward()
        opt.step()
    return model.eval()


def tokenizer(words, bos=False):
    vocab = {"[UNK]": 0, "[BOS]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    if bos:
        tok.post_processor = tokenizers.processors.TemplateProcessing(
            single="[BOS] $A", special_tokens=[("[BOS]", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                                bos_token="[BOS]" if bos else None), len(vocab)


def make_tiny(d: Path):
    """(model directory, text file) in d: a 2-layer Llama trained for a few
    seconds on the text, and a word-level tokenizer (no BOS token)."""
    fast, n_vocab = tokenizer(sorted(set(TEXT.split())))
    fast.save_pretrained(d)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   vocab_size=n_vocab, bos_token_id=1, eos_token_id=0,
                                   pad_token_id=0, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(cfg)
    ids = torch.tensor(fast(TEXT)["input_ids"])
    train(model, ids).save_pretrained(d)
    text = d / "text.txt"
    text.write_text(TEXT)
    return d, text


def ids_of(model_dir, text):
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    return torch.tensor(tok(Path(text).read_text())["input_ids"])


def cli_args(tiny, tmp_path, *extra):
    model_dir, text = tiny
    out = tmp_path / "r.json"
    args = ["--model", str(model_dir), "--text", str(text), "--seq-len", "24", "--stride", "10",
            "--max-tokens", "160", "--calibration-tokens", "48", "--no-progress",
            "--json", str(out), *extra]
    return args, out


def by_hand(model, ids, seq_len, stride, bos=None):
    """(NLL sum, count, per-token log-probabilities [count, vocab]) by a
    direct loop: each scored token predicted from the window before it."""
    nll, rows = 0.0, []
    with torch.no_grad():
        for begin, end, k in tq_eval.windows(ids.numel(), seq_len, stride, bos is not None):
            x = ids[begin:end] if bos is None else torch.cat([torch.tensor([bos]), ids[begin:end]])
            logp = torch.log_softmax(model(x[None]).logits[0].double(), -1)
            for pos in range(x.numel() - k, x.numel()):
                nll -= float(logp[pos - 1, x[pos]])
                rows.append(logp[pos - 1])
    return nll, len(rows), torch.stack(rows)
