"""python -m torch_quant.eval on a tiny random model (no downloads): windows,
perplexity against a direct computation, CLI -> JSON, torchrun with 2 ranks,
bad arguments, and the janeaustenr reader."""

from __future__ import annotations

import gzip
import json
import math
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from torch_quant import eval as tq_eval
from torch_quant.corpus import _Unserializer, austen_data_dir, austen_text

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

TEXT = ("It is a truth universally acknowledged , that a single man in possession of a good "
        "fortune , must be in want of a wife . However little known the feelings or views of "
        "such a man may be on his first entering a neighbourhood , this truth is so well fixed "
        "in the minds of the surrounding families , that he is considered the rightful "
        "property of some one or other of their daughters . ") * 6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model directory, text file): a random 2-layer Llama and a word-level tokenizer."""
    d = tmp_path_factory.mktemp("tiny")
    words = sorted(set(TEXT.split()))
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.save_pretrained(d)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   vocab_size=len(vocab), bos_token_id=0, eos_token_id=0,
                                   pad_token_id=0, max_position_embeddings=64)
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(d)
    text = d / "text.txt"
    text.write_text(TEXT)
    return d, text


def _ids(model_dir, text):
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    return torch.tensor(tok(Path(text).read_text())["input_ids"])


@pytest.mark.parametrize("n,seq_len,stride", [(2, 2, 1), (7, 3, 3), (100, 16, 8), (100, 16, 16),
                                              (17, 16, 5), (1025, 64, 7), (5, 64, 32)])
def test_windows_score_every_token_once(n, seq_len, stride):
    scored = torch.zeros(n, dtype=torch.int64)
    for begin, end, k in tq_eval.windows(n, seq_len, stride):
        assert 0 <= begin < end <= n and end - begin <= seq_len and 1 <= k <= end - begin - 0
        assert k <= end - begin - (1 if begin == 0 else 0)
        scored[end - k:end] += 1
    assert scored[0] == 0 and bool((scored[1:] == 1).all())


def test_perplexity_equals_direct_computation(tiny):
    model_dir, text = tiny
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = _ids(model_dir, text)[:150]
    # one window: exactly the model's own mean loss
    with torch.no_grad():
        ref = math.exp(float(model(ids[None], labels=ids[None]).loss))
    ppl, _, count = tq_eval.perplexity(model, ids, seq_len=150, stride=150)
    assert count == ids.numel() - 1
    assert ppl == pytest.approx(ref, rel=1e-5)
    # sliding windows: every token's NLL from its own window, by hand
    seq_len, stride = 32, 12
    nll, n = 0.0, 0
    with torch.no_grad():
        for begin, end, k in tq_eval.windows(ids.numel(), seq_len, stride):
            logp = torch.log_softmax(model(ids[None, begin:end]).logits[0].double(), -1)
            for pos in range(end - k, end):  # predict ids[pos] from ids[begin:pos]
                nll -= float(logp[pos - begin - 1, ids[pos]])
                n += 1
    ppl, total, count = tq_eval.perplexity(model, ids, seq_len=seq_len, stride=stride)
    assert count == n == ids.numel() - 1
    assert total == pytest.approx(nll, rel=1e-5)
    assert ppl == pytest.approx(math.exp(nll / n), rel=1e-5)


def _cli(tiny, tmp_path, *extra):
    model_dir, text = tiny
    out = tmp_path / "r.json"
    args = ["--model", str(model_dir), "--text", str(text), "--seq-len", "24", "--stride", "10",
            "--max-tokens", "160", "--calibration-tokens", "48", "--no-progress",
            "--json", str(out), *extra]
    return args, out


def test_cli_end_to_end(tiny, tmp_path, capsys):
    args, out = _cli(tiny, tmp_path)
    assert tq_eval.main(args) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["tokens"] == 160 and res["model"] == str(tiny[0]) and res["corpus"] == str(tiny[1])
    assert [r["mode"] for r in res["results"]] == ["fp32", "w8a8-symmetric", "w8a8-asymmetric",
                                                   "w8a8-auto"]
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny[0]).eval()
    ids = _ids(*tiny)[:160]
    ppl, nll, count = tq_eval.perplexity(model, ids, 24, 10)
    fp32 = res["results"][0]
    assert fp32["perplexity"] == pytest.approx(ppl, rel=1e-9)
    assert fp32["tokens_scored"] == count == 159
    for r in res["results"]:
        assert r["seconds"] > 0 and r["weight_bytes"] > 0
        assert r["perplexity"] == pytest.approx(math.exp(r["nll_sum"] / r["tokens_scored"]))
        assert r["perplexity"] == pytest.approx(fp32["perplexity"], rel=0.05)  # W8A8 is close
        if r["mode"] != "fp32":
            assert r["weight_bytes"] < fp32["weight_bytes"]
            assert len(r["layers"]) == 14  # 2 x (4 attention + 3 MLP); lm_head skipped
    auto = res["results"][3]
    assert {lay["act_mode"] for lay in auto["layers"]} <= {"symmetric", "asymmetric"}
    for mode in ("w8a8-symmetric", "w8a8-asymmetric", "w8a8-auto"):
        assert mode in printed
    assert "perplexity" in printed and "vs fp32" in printed


def test_cli_static_modes_and_plot(tiny, tmp_path):
    pytest.importorskip("matplotlib")
    args, out = _cli(tiny, tmp_path, "--modes", "fp32,w8a8-auto-static,w8a8-symmetric-static",
                     "--plot", str(tmp_path / "p.png"), "--skip", "")
    assert tq_eval.main(args) == 0
    res = json.loads(out.read_text())
    assert [r["mode"] for r in res["results"]] == ["fp32", "w8a8-auto-static",
                                                   "w8a8-symmetric-static"]
    assert all(lay["act_granularity"] == "per_tensor" for lay in res["results"][1]["layers"])
    assert len(res["results"][1]["layers"]) == 15  # lm_head too
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("extra,msg", [
    (["--text", "/nonexistent/file.txt"], "--text: no such file"),
    (["--modes", "fp32,w8a8-sideways"], "--modes: unknown mode"),
    (["--seq-len", "0"], "--seq-len must be at least 2"),
    (["--stride", "0"], "--stride must be in"),
    (["--stride", "99"], "--stride must be in"),
    (["--max-tokens", "-1"], "--max-tokens must be >= 0"),
    (["--model", "/nonexistent/model.gguf"], "--model: no such file"),
    (["--threads", "0"], "--threads must be >= 1"),
])
def test_bad_arguments(tiny, tmp_path, capsys, extra, msg):
    args, _ = _cli(tiny, tmp_path)
    # later flags win in argparse; --text appears once in the mutually exclusive group
    if "--text" in extra:
        i = args.index("--text")
        del args[i:i + 2]
    assert tq_eval.main(args + extra) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err
    assert err.startswith("python -m torch_quant.eval: error:")


def test_bad_arguments_in_a_real_process(tiny, tmp_path):
    """No traceback reaches the user from a real command line either."""
    proc = subprocess.run([sys.executable, "-m", "torch_quant.eval", "--modes", "int4"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "unknown mode" in proc.stderr and "Traceback" not in proc.stderr


def test_torchrun_two_ranks_equals_one_process(tiny, tmp_path):
    args, single = _cli(tiny, tmp_path, "--modes", "fp32,w8a8-asymmetric", "--threads", "1")
    assert tq_eval.main(args) == 0
    dist_json = tmp_path / "dist.json"
    args[args.index("--json") + 1] = str(dist_json)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", "-m", "torch_quant.eval", *args],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = json.loads(single.read_text()), json.loads(dist_json.read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    for a, b in zip(one["results"], two["results"]):
        assert a["mode"] == b["mode"]
        assert a["tokens_scored"] == b["tokens_scored"]
        assert b["nll_sum"] == pytest.approx(a["nll_sum"], rel=1e-9)
        assert b["perplexity"] == pytest.approx(a["perplexity"], rel=1e-9)


# ---------------------------------------------------------------------------
# the janeaustenr reader


def _r_serialize(obj) -> bytes:
    """A minimal R XDR serializer (format version 3) for character vectors
    and named lists of integer vectors, written from R's format description."""
    out = [b"X\n", struct.pack(">iii", 3, 0x040200, 0x030500), struct.pack(">i", 5), b"UTF-8"]

    def char(s):
        b = s.encode()
        out.append(struct.pack(">ii", 9 | (1 << 15), len(b)) + b)  # CHARSXP, UTF-8 flag

    def write(o):
        if isinstance(o, dict):  # VECSXP with a names attribute
            out.append(struct.pack(">ii", 19 | (1 << 9), len(o)))
            for v in o.values():
                write(v)
            out.append(struct.pack(">i", 2 | (1 << 10)))  # pairlist node with a tag
            out.append(struct.pack(">i", 1))  # SYMSXP
            char("names")
            out.append(struct.pack(">ii", 16, len(o)))
            for k in o:
                char(k)
            out.append(struct.pack(">i", 254))  # end of pairlist
        elif isinstance(o, list) and all(isinstance(v, int) for v in o):
            out.append(struct.pack(f">ii{len(o)}i", 13, len(o), *o))
        else:  # character vector, None = NA
            out.append(struct.pack(">ii", 16, len(o)))
            for s in o:
                if s is None:
                    out.append(struct.pack(">ii", 9, -1))
                else:
                    char(s)

    write(obj)
    return b"".join(out)


def test_reader_on_a_synthetic_lazy_load_database(tmp_path):
    books = {"prideprejudice": ["PRIDE AND PREJUDICE", "", "It is a truth ...", None, "ünïcode"],
             "emma": ["EMMA", "x" * 1000]}
    rdb, offsets = b"", {}
    for name, lines in books.items():
        blob = zlib.compress(_r_serialize(lines))
        blob = struct.pack(">I", len(blob)) + blob
        offsets[name] = [len(rdb), len(blob)]
        rdb += blob
    (tmp_path / "Rdata.rdb").write_bytes(rdb)
    index = {"variables": offsets, "references": {}, "compressed": [1]}
    (tmp_path / "Rdata.rdx").write_bytes(gzip.compress(_r_serialize(index)))
    assert austen_text("prideprejudice", tmp_path) == "PRIDE AND PREJUDICE\n\nIt is a truth ...\n\nünïcode"
    assert austen_text("emma", tmp_path).endswith("x" * 1000)
    with pytest.raises(ValueError, match="no book 'persuasion'"):
        austen_text("persuasion", tmp_path)
    with pytest.raises(ValueError, match="not an R XDR"):
        _Unserializer(b"RDX2\n")


@pytest.mark.skipif(austen_data_dir() is None, reason="r-cran-janeaustenr not unpacked "
                    "(make eval-data)")
def test_real_austen_text():
    text = austen_text("prideprejudice")
    assert text.startswith("PRIDE AND PREJUDICE")
    assert "It is a truth universally acknowledged" in text
    assert 600_000 < len(text) < 800_000
