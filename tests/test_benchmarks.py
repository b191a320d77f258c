"""The benchmark (benchmarks/, ``python -m benchmarks``) on tiny sizes: the
linear section and the end-to-end section's helpers run end to end and give
positive numbers in the rows they should have. Fast, no network, no GPU; the
numbers are not measurements."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from benchmarks import e2e, linear, lora, machine, run, tables
from benchmarks.timing import Config

CFG = Config(repeat=2, warmup=1, repeat_given=True, quick=True)


def test_command_line():
    args = run.parse_args(["--only", "linear,e2e", "--quick", "--repeat", "2"])
    assert [s.name for s in args.sections] == ["linear", "e2e"] and args.quick
    assert {"machine", "per_tensor", "per_token", "isa", "linear", "e2e", "lora", "cuda"} == {
        s.name for s in run.SECTIONS}
    with pytest.raises(SystemExit):
        run.parse_args(["--only", "nope"])


def test_machine_figures_are_positive():
    f = machine.figures(CFG)
    assert f.read_gbps > 0 and f.copy_gbps > 0 and len(f.read_runs) == 3
    if f.peak is not None:
        assert f.peak.ops_per_s > 0 and f.peak.threads >= 1 and len(f.peak.runs) == 3
    res = machine.section_machine(CFG)
    assert {"dram_read", "copy"} <= {r.key for r in res.rows}
    assert "GB/s" in tables.format_section(res)


def test_threaded_peak_sums_overlapping_threads_only():
    import threading
    import time

    def overlapping(seconds):  # releases the GIL, as a kernel that releases it would
        time.sleep(seconds)
        return 1.0

    p = machine.threaded_peak(overlapping, 0.2, 3, runs=2)
    assert p.concurrent and p.threads == 3 and p.ops_per_s == 3.0

    lock = threading.Lock()

    def serialised(seconds):  # one at a time, as a function holding the GIL runs
        with lock:
            time.sleep(seconds)
        return 1.0

    p = machine.threaded_peak(serialised, 0.05, 3, runs=1)
    assert not p.concurrent and p.threads == 1 and p.ops_per_s == 1.0
    assert "1 thread only" in p.label


def test_linear_section_tiny():
    sizes = linear.LinearSizes(shapes=((64, 96, (1, 8)),), copies=2, peak_shape=(8, 64, 96),
                               stream_k=96, torchao_compiled=False)
    with torch.inference_mode():
        res = linear.section_linear(CFG, sizes)
    rows = {r.key: r for r in res.rows}
    for M in (1, 8):
        for key in ("fp32", "bf16", "ours_sym", "ours_asym", "ours_plain", "ours_plain_wsum",
                    "ours_smooth"):
            r = rows[f"linear/M{M}/N64/K96/{key}"]
            assert len(r.times) == 2 and all(t > 0 for t in r.times)
            assert r.extra["gops"] > 0
            if key != "fp32":
                assert r.ratio > 0 and r.baseline == "fp32"
                assert r.extra["rel_err"] < 0.1
        sym = rows[f"linear/M{M}/N64/K96/ours_sym"]
        assert rows[f"linear/M{M}/N64/K96/ours_asym"].extra["asym_over_sym"] > 0
        assert rows[f"linear/M{M}/N64/K96/fp32"].extra["over_ours_sym"] > 0
        assert (sym.gbps is not None) == (M == 1)  # the weight stream, at M = 1 only
    packed = rows["linear/M1/N64/K96/ours_sym"]
    assert packed.nbytes == 64 * (96 // 4 + 2) * 4  # the packed weight, read once per call
    assert packed.extra["of_dram_read"] > 0
    names = [g.name for g in res.goals]
    assert any("M=1 N=64 K=96: quantize_dynamic time / ours sym" in n for n in names)
    assert any("weight stream / DRAM read bandwidth" in n for n in names)
    assert any("asymmetric time / symmetric" in n for n in names)
    assert any("M=1 N=64 K=96: ours plain w time / ours sym (packed)" in n for n in names)
    assert any("M=1 N=64 K=96: ours plain w + w_sum time / ours sym (packed)" in n
               for n in names)
    assert any("M=1 N=64 K=96: fp32 time / ours on the plain w" in n for n in names)
    text = tables.format_section(res)
    assert "ours QuantLinear symmetric (packed w)" in text and "/ours sym" in text


def tiny_llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                   max_position_embeddings=128, tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(cfg).eval(), None, "tiny random Llama"


@pytest.mark.slow
def test_e2e_section_tiny():
    sizes = e2e.E2ESizes(prompt_len=4, new_tokens=3, prefill_len=16, repeat=2,
                         torchao_compiled=False)
    with torch.inference_mode():
        res = e2e.section_e2e(Config(repeat=2, warmup=1), sizes, load=tiny_llama)
    rows = {r.key: r for r in res.rows}
    keys = ["fp32", "ours_sym", "ours_asym", "qdyn"]
    if importlib.util.find_spec("torchao") is not None:
        keys.append("torchao_eager")
    for what, n_tok in (("decode", 3), ("prefill", 16)):
        for k in keys:
            r = rows[f"e2e/{what}/{k}"]
            assert len(r.times) == 2 and all(t > 0 for t in r.times)
            assert r.extra["tokens_per_s"] == pytest.approx(n_tok / r.median)
            if k != "fp32":
                assert r.ratio > 0
            if k != "qdyn":
                assert r.extra["vs_quantize_dynamic"] > 0
            if "torchao_eager" in keys and k != "torchao_eager":
                assert r.extra["vs_torchao"] > 0
    for k in ("ours_sym", "ours_asym"):
        info = res.extra[k]
        assert info["int8_weight_bytes"] > 0
        assert info["bytes_after"] < info["bytes_before"]  # float linears replaced by int8
        if info["rss_before"] is not None:
            assert info["rss_after"] > 0 and info["rss_after_warmup"] > 0
    assert any(n.startswith("memory, ours") for n in res.notes)
    assert any(n.startswith("greedy tokens") for n in res.notes)
    assert "decode  ours quantize_model symmetric" in tables.format_section(res)


@pytest.mark.slow
def test_lora_section_tiny():
    """The lora section end to end on a tiny Llama and a random text: both
    variants timed, our perplexity measured before and after training."""
    pytest.importorskip("peft")
    sizes = lora.LoraSizes(batch=1, seq_len=12, repeat=2, train_steps=4, eval_tokens=40,
                           eval_seq_len=16, eval_stride=8)
    text = torch.randint(0, 128, (200,), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():  # as the command line runs the sections
        res = lora.section_lora(Config(repeat=2, warmup=1), sizes, load=tiny_llama,
                                text_ids=lambda tok: text)
    rows = {r.key: r for r in res.rows}
    assert set(rows) == {"lora/step/fp32", "lora/step/ours"}
    assert all(len(r.times) == 2 and all(t > 0 for t in r.times) for r in rows.values())
    ours = rows["lora/step/ours"]
    assert ours.ratio == pytest.approx(rows["lora/step/fp32"].median / ours.median)
    assert ours.extra["steps"] == 4 and ours.extra["perplexity_before"] > 1
    assert [g.op for g in res.goals] == ["<=", "<="]
    assert res.goals[0].value == pytest.approx(1 / ours.ratio)
    assert res.goals[1].value == pytest.approx(ours.extra["perplexity_after"]
                                               / ours.extra["perplexity_before"])


def test_e2e_skips_without_the_model():
    def missing():
        raise e2e.SkipSection("the model package is not installed")

    res = e2e.section_e2e(CFG, load=missing)
    assert "skipped" in res.title and not res.rows
    assert "skipped" in tables.format_section(res)


@pytest.mark.slow
def test_every_section_runs_its_quick_path(monkeypatch, capsys, tmp_path):
    """`python -m benchmarks --quick` end to end, every section (e2e on a tiny
    model built here): a renamed import or helper fails here, not in a user's
    `make bench`."""
    pytest.importorskip("transformers")
    monkeypatch.setattr(e2e, "load_default_model", tiny_llama)
    out = tmp_path / "bench.json"
    assert run.main(["--quick", "--repeat", "2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for s in run.SECTIONS:
        assert f"== {s.name}:" in text
    assert "== e2e: end to end" in text and "tiny random Llama" in text
    assert "Traceback" not in text and "== goals" in text
    import json
    sections = {s["name"]: s for s in json.loads(out.read_text())["sections"]}
    assert set(sections) == {s.name for s in run.SECTIONS}
    assert any(r["key"] == "e2e/prefill/ours_sym" for r in sections["e2e"]["rows"])


@pytest.mark.slow
def test_default_model_loads_or_skips():
    """The e2e section's real model: loaded where `make eval-data` installed it,
    else a one-line SkipSection (never an ImportError)."""
    try:
        model, tok, desc = e2e.load_default_model()
    except e2e.SkipSection as e:  # one line saying why (the package missing, or the error)
        assert str(e).strip() and "\n" not in str(e)
        return
    assert model.config.vocab_size > 0 and tok is not None and "SmolLM2" in desc


def test_e2e_helpers():
    model, _, _ = tiny_llama()
    assert e2e.cache_kw(model) in ("cache", "past_key_values")
    ids = e2e.prompt_ids(None, 128, 5, torch.Generator().manual_seed(0))
    assert ids.shape == (1, 5) and int(ids.max()) < 128
    v = e2e.Variant("fp32", model, e2e.cache_kw(model))
    with torch.inference_mode():
        setup, fn, state = v.decoder(ids, 2)
        setup()
        fn()
        assert len(state["tokens"]) == 2
        assert v.prefill(ids).shape == (1, 1, 128)
