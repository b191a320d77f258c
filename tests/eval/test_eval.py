"""python -m torch_quant.eval on a tiny random model (no downloads): windows,
perplexity against a direct computation, CLI -> JSON, torchrun with 2 ranks,
bad arguments, and the janeaustenr reader."""

from __future__ import annotations

import copy
import gzip
import json
import math
import os
import struct
import subprocess
import sys
import zlib

import pytest
import torch

import torch_quant as tq
from torch_quant.eval import cli as tq_eval
from torch_quant.eval import modes as eval_modes
from torch_quant.eval.corpus import _unserialize, austen_data_dir, austen_text

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
from eval_helpers import TEXT, by_hand, cli_args, ids_of, make_tiny, tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize("bos", [False, True], ids=["no-bos", "bos"])
@pytest.mark.parametrize("n,seq_len,stride", [(2, 2, 1), (7, 3, 3), (100, 16, 8), (100, 16, 16),
                                              (17, 16, 5), (1025, 64, 7), (5, 64, 32),
                                              (160, 16, 16), (40, 2, 2)])
def test_windows_score_every_token_once(n, seq_len, stride, bos):
    scored = torch.zeros(n, dtype=torch.int64)
    wins = tq_eval.windows(n, seq_len, stride, bos)
    for begin, end, k in wins:
        assert 0 <= begin < end <= n and end - begin + bos <= seq_len
        # every scored token has context in its window: a BOS or a token before it
        assert 1 <= k <= end - begin - (0 if bos else 1)
        scored[end - k:end] += 1
    assert bool((scored[1:] == 1).all()) and scored[0] == (1 if bos else 0)
    starts = [b for b, _, _ in wins]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)


def test_windows_with_stride_equal_to_seq_len_keep_one_context_token():
    """n = 160, windows of 16, stride 16: all 159 tokens after the first are
    scored; each window after the first starts on the last token of the one
    before (its context). With a BOS token, windows of 15 text tokens are
    disjoint and all 160 tokens are scored."""
    wins = tq_eval.windows(160, 16, 16)
    assert sum(k for _, _, k in wins) == 159
    assert all(b == prev_end - 1 for (b, _, _), (_, prev_end, _) in zip(wins[1:], wins))
    wins = tq_eval.windows(160, 16, 16, bos=True)
    assert sum(k for _, _, k in wins) == 160
    assert [(b, e) for b, e, _ in wins[:2]] == [(0, 15), (15, 30)]


def test_perplexity_equals_direct_computation(tiny):
    model_dir, text = tiny
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = ids_of(model_dir, text)[:150]
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


def test_cli_end_to_end(tiny, tmp_path, capsys):
    args, out = cli_args(tiny, tmp_path)
    assert tq_eval.main(args) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["tokens"] == 160 and res["model"] == str(tiny[0])
    assert res["corpus"].startswith(str(tiny[1])) and not res["bos"]
    assert [r["mode"] for r in res["results"]] == ["fp32", "w8a8-symmetric", "w8a8-asymmetric",
                                                   "w8a8-auto"]
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny[0]).eval()
    all_ids = ids_of(*tiny)
    ids = all_ids[:160]
    nll, count, ref_logp = by_hand(model, ids, 24, 10)
    fp32 = res["results"][0]
    assert fp32["tokens_scored"] == count == 159
    assert fp32["nll_sum"] == pytest.approx(nll, rel=1e-6)
    assert fp32["perplexity"] < 10  # learned weights: far below the vocabulary size (~60)
    # Each W8A8 row is the quantized copy's own perplexity, computed here by
    # hand on a copy converted as the eval says it does it (calibration: the
    # 48 tokens after the evaluated ones, lm_head skipped, smoothing searched).
    batches = tq_eval.calibration_batches(all_ids[160:], 48, 24)
    assert sum(b.numel() for b in batches) == res["calibration_tokens"] == 48
    for r, (act_mode, gran) in zip(res["results"][1:], [("symmetric", "per_token"),
                                                         ("asymmetric", "per_token"),
                                                         ("auto", "per_token")]):
        q = tq.quantize_model(copy.deepcopy(model), act_mode, gran, batches, skip=["lm_head"],
                              progress=False)
        q_nll, q_count, q_logp = by_hand(q, ids, 24, 10)
        assert r["tokens_scored"] == q_count == 159
        assert r["nll_sum"] == pytest.approx(q_nll, rel=1e-6), r["mode"]
        assert r["nll_sum"] != pytest.approx(nll, rel=1e-6), r["mode"]  # not the float model
        kl = float((ref_logp.exp() * (ref_logp - q_logp)).sum(-1).mean())
        agree = float((ref_logp.argmax(-1) == q_logp.argmax(-1)).double().mean())
        assert r["kl_divergence"] == pytest.approx(kl, rel=2e-2) and kl > 0
        assert r["top1_agreement"] == pytest.approx(agree)
        assert r["perplexity"] == pytest.approx(math.exp(r["nll_sum"] / r["tokens_scored"]))
        assert r["weight_bytes"] < fp32["weight_bytes"] and r["smoothing"] == "auto"
        assert len(r["layers"]) == 14  # 2 x (4 attention + 3 MLP); lm_head skipped
        assert all(lay["smoothing"] is not None for lay in r["layers"])
    for r in res["results"]:
        assert r["seconds"] > 0
    auto = res["results"][3]
    assert {lay["act_mode"] for lay in auto["layers"]} <= {"symmetric", "asymmetric"}
    for mode in ("w8a8-symmetric", "w8a8-asymmetric", "w8a8-auto"):
        assert mode in printed
    assert "perplexity" in printed and "KL vs fp32" in printed and "top-1 agree" in printed


def test_bos_starts_every_window(tmp_path):
    """A tokenizer that adds BOS: every window starts with it (calibration
    batches too) and all evaluated tokens are scored."""
    d = tmp_path / "bos"
    fast, n_vocab = tokenizer(sorted(set(TEXT.split())), bos=True)
    fast.save_pretrained(d)
    torch.manual_seed(1)
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   vocab_size=n_vocab, bos_token_id=1, eos_token_id=0,
                                   max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(d)
    (tmp_path / "t.txt").write_text(TEXT)
    out = tmp_path / "r.json"
    assert tq_eval.main(["--model", str(d), "--text", str(tmp_path / "t.txt"), "--seq-len", "16",
                         "--stride", "16", "--max-tokens", "100", "--calibration-tokens", "30",
                         "--modes", "fp32", "--no-progress", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    ids = torch.tensor(fast(TEXT, add_special_tokens=False)["input_ids"])[:100]
    nll, count, _ = by_hand(model, ids, 16, 16, bos=1)
    assert res["bos"] and res["results"][0]["tokens_scored"] == count == 100
    assert res["results"][0]["nll_sum"] == pytest.approx(nll, rel=1e-6)
    batches = tq_eval.calibration_batches(ids, 30, 16, bos=1)
    assert all(int(b[0, 0]) == 1 and b.shape[1] <= 16 for b in batches)


def test_calibration_never_uses_evaluated_tokens(tiny, tmp_path, capsys):
    # all of the text evaluated: nothing left to calibrate on -> refused
    args, _ = cli_args(tiny, tmp_path, "--max-tokens", "0")
    assert tq_eval.main(args) == 2
    assert "calibration needs 48 tokens that are not evaluated" in capsys.readouterr().err
    # fp32 alone needs no calibration
    args, out = cli_args(tiny, tmp_path, "--max-tokens", "0", "--modes", "fp32")
    assert tq_eval.main(args) == 0
    # calibration batches are the tokens right after the evaluated ones
    seen = []
    real = eval_modes.quantize_

    def spy(m, config, calibration_data, **kw):
        seen.extend(torch.cat([b.flatten() for b in calibration_data]).tolist())
        return real(m, config, calibration_data, **kw)
    try:
        eval_modes.quantize_ = spy
        args, out = cli_args(tiny, tmp_path, "--modes", "w8a8-asymmetric")
        assert tq_eval.main(args) == 0
    finally:
        eval_modes.quantize_ = real
    assert seen == ids_of(*tiny)[160:208].tolist()


def test_every_mode_warms_up_untimed(tiny):
    """One untimed window per model before the timed ones: each model runs
    windows + 1 times."""
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny[0]).eval()
    calls = {"a": 0, "b": 0}

    class Counting(torch.nn.Module):
        def __init__(self, key):
            super().__init__()
            self.key, self.inner = key, model

        def forward(self, x):
            calls[self.key] += 1
            return self.inner(x)

    ids = ids_of(*tiny)[:100]
    n = len(tq_eval.windows(100, 24, 10))
    scores = tq_eval.evaluate({"a": Counting("a"), "b": Counting("b")}, ids, 24, 10)
    assert calls == {"a": n + 1, "b": n + 1}
    assert scores["a"].nll == scores["b"].nll and scores["a"].count == 99


def test_relu_digits(tmp_path, capsys):
    """The ReLU model: trained now, every mode reported with its accuracy,
    and auto picks asymmetric for the inputs after each ReLU (one-sided)."""
    pytest.importorskip("sklearn")
    out = tmp_path / "d.json"
    assert tq_eval.main(["--model", "relu-digits", "--modes", ",".join(tq_eval.MODES),
                         "--no-progress", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    rows = {r["mode"]: r for r in res["results"]}
    assert set(rows) == set(tq_eval.MODES)
    assert rows["fp32"]["accuracy"] > 0.9 and "perplexity" not in rows["fp32"]
    for mode, r in rows.items():
        assert 0.0 <= r["accuracy"] <= 1.0
        if mode != "fp32":
            assert abs(r["accuracy"] - rows["fp32"]["accuracy"]) < 0.03
            assert 0 <= r["kl_divergence"] < 0.05 and r["top1_agreement"] > 0.95
    for mode in ("w8a8-auto", "w8a8-auto-static"):
        picks = {lay["name"]: lay["act_mode"] for lay in rows[mode]["layers"]}
        assert picks["2"] == "asymmetric" and picks["4"] == "asymmetric"  # after ReLU
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "w8a8-auto picked" in printed


def test_cli_static_modes_and_plot(tiny, tmp_path):
    pytest.importorskip("matplotlib")
    args, out = cli_args(tiny, tmp_path, "--modes", "fp32,w8a8-auto-static,w8a8-symmetric-static",
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
    args, _ = cli_args(tiny, tmp_path)
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


@pytest.mark.slow
def test_torchrun_two_ranks_equals_one_process(tiny, tmp_path):
    args, single = cli_args(tiny, tmp_path, "--modes", "fp32,w8a8-asymmetric", "--threads", "1")
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
    with pytest.raises(ValueError, match="not an R serialized object"):
        _unserialize(b"RDX2\n", "a test")


@pytest.mark.skipif(austen_data_dir() is None, reason="r-cran-janeaustenr not unpacked "
                    "(make eval-data)")
def test_real_austen_text():
    text = austen_text("prideprejudice")
    assert text.startswith("PRIDE AND PREJUDICE")
    assert "It is a truth universally acknowledged" in text
    assert 600_000 < len(text) < 800_000


@pytest.mark.parametrize("value", ["2", "-0.1", "nan", "soft"])
def test_smoothing_argument_is_checked_when_parsed(value, capsys):
    """--smoothing: auto, off or an alpha in [0, 1]; anything else is a usage
    error naming the flag (argparse's exit status 2), before any model loads."""
    with pytest.raises(SystemExit) as e:
        tq_eval.main(["--model", "relu-digits", "--smoothing", value])
    assert e.value.code == 2
    assert "--smoothing: must be auto, off or an alpha in [0, 1]" in capsys.readouterr().err
    assert tq_eval._parse(["--smoothing", "0.5"]).smoothing == 0.5
    assert tq_eval._parse(["--smoothing", "off"]).smoothing == "off"
