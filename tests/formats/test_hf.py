"""Hugging Face integration (torch_quant.hf): quantize while loading with
``from_pretrained(..., quantization_config=TorchQuantConfig(...))``, and
``save_pretrained`` -> plain ``from_pretrained`` of a quantized model, on tiny
Llama models built from a config (no hub)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import torch_quant as tq

transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("torch_quant.hf")


def tiny_llama(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                   **kw)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("float")
    tiny_llama().save_pretrained(d)
    return d


def ids(n=2, t=12, seed=1):
    return torch.randint(0, 128, (n, t), generator=torch.Generator().manual_seed(seed))


def batches():
    return [{"input_ids": ids(2, 16, s)} for s in range(3)]


def logits(model, x=None):
    with torch.no_grad():
        return model(x if x is not None else ids()).logits


def load(d, **kw):
    return transformers.AutoModelForCausalLM.from_pretrained(d, **kw).eval()


def kinds(model):
    return {n: type(m).__name__ for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, tq.QuantLinear))}


@pytest.mark.parametrize("mode", ["symmetric", "asymmetric"])
def test_quantize_on_load_equals_quantize_(float_dir, tmp_path, mode):
    """Per-token modes quantize each weight as it is read; the model equals
    tq.quantize_ of the float model (lm_head left float, as transformers
    leaves the output head of every quantization method), and it survives
    save_pretrained -> from_pretrained."""
    q = load(float_dir, quantization_config=hf.TorchQuantConfig(act_mode=mode))
    want = tq.quantize_(load(float_dir), tq.QuantConfig(mode, skip="lm_head"))
    assert kinds(q) == kinds(want)
    assert kinds(q)["lm_head"] == "Linear" and kinds(q)["model.layers.0.mlp.up_proj"] == "QuantLinear"
    assert torch.equal(logits(q), logits(want))
    q.save_pretrained(tmp_path)
    again = load(tmp_path)
    assert kinds(again) == kinds(q)
    assert torch.equal(logits(again), logits(q))
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "torch_quant" and saved["act_mode"] == mode
    assert set(saved["layers"]) == {n for n, k in kinds(q).items() if k == "QuantLinear"}


def test_calibrated_settings_quantize_after_loading(float_dir, tmp_path):
    """act_mode="auto" with static scales and the smoothing search need
    calibration data: the float model is loaded, then tq.quantize_ runs; the
    per-layer choices (modes, smoothing factors, rotations) are recorded in
    config.json and rebuilt by a plain from_pretrained."""
    config = hf.TorchQuantConfig(act_mode="auto", act_granularity="per_tensor",
                                 calibration_data=batches())
    q = load(float_dir, quantization_config=config)
    want = tq.quantize_(load(float_dir), tq.QuantConfig("auto", "per_tensor", skip="lm_head"),
                        batches(), progress=False)
    assert torch.equal(logits(q), logits(want))
    q.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert "calibration_data" not in saved
    again = load(tmp_path)
    assert torch.equal(logits(again), logits(q))
    for name, m in again.named_modules():
        if isinstance(m, tq.QuantLinear):
            assert saved["layers"][name]["act_mode"] == m.act_mode
            assert m.input_scale.dtype == torch.float32


def test_missing_calibration_and_bad_settings_are_errors(float_dir):
    with pytest.raises(ValueError, match="calibration_data"):
        load(float_dir, quantization_config=hf.TorchQuantConfig(act_mode="auto"))
    with pytest.raises(ValueError, match="act_mode must be one of"):
        hf.TorchQuantConfig(act_mode="sideways")
    with pytest.raises(TypeError, match="skip must be"):
        hf.TorchQuantConfig(skip=3)
    with pytest.raises(ValueError, match="unknown settings"):
        hf.TorchQuantConfig(colour="blue")
    with pytest.raises(ValueError, match="layers"):
        hf.TorchQuantConfig(layers={"a": {"act_mode": "symmetric"}})


def test_a_model_quantized_by_quantize_saves_with_mark_quantized(tmp_path):
    """Mixed per-layer settings (auto modes, smoothing searched, rotations,
    skipped layers) made by tq.quantize_ come back identical."""
    model = tiny_llama(3)
    tq.quantize_(model, tq.QuantConfig("auto", skip=["lm_head", "model.layers.1.mlp"]),
                 batches(), progress=False)
    want = logits(model)
    hf.mark_quantized(model)
    model.save_pretrained(tmp_path)
    again = load(tmp_path)
    assert kinds(again) == kinds(model)
    settings = {n: tq.formats.serialization._settings(m) for n, m in tq.nn.quantized_layers(again)}
    assert settings == {n: tq.formats.serialization._settings(m)
                        for n, m in tq.nn.quantized_layers(model)}
    assert torch.equal(logits(again), want)
    # the same tensors as tq.save writes
    tq.save(model, tmp_path / "ours.safetensors")
    fresh = tiny_llama(4)
    tq.load(fresh, tmp_path / "ours.safetensors")
    assert torch.equal(logits(fresh), want)


def test_bf16_loading_keeps_the_formats_dtypes(float_dir, tmp_path):
    """Loading under dtype=torch.bfloat16: the scales stay float32 and the
    int8 codes are those of the float32 weights."""
    q32 = load(float_dir, quantization_config=hf.TorchQuantConfig())
    q16 = load(float_dir, quantization_config=hf.TorchQuantConfig(), dtype=torch.bfloat16)
    layer32 = q32.get_submodule("model.layers.0.self_attn.q_proj")
    layer16 = q16.get_submodule("model.layers.0.self_attn.q_proj")
    assert layer16.weight_scale.dtype == torch.float32
    assert torch.equal(layer16.plain_weight(), layer32.plain_weight())
    assert torch.equal(layer16.weight_scale, layer32.weight_scale)
    q16.save_pretrained(tmp_path)
    again = load(tmp_path, dtype=torch.bfloat16)
    assert torch.equal(logits(again), logits(q16))
    q32.to(torch.bfloat16)  # a dtype change moves the buffers, never casts them
    assert layer32.weight_scale.dtype == torch.float32


def test_invalid_checkpoint_values_are_errors(float_dir, tmp_path):
    from safetensors.torch import load_file, save_file
    q = load(float_dir, quantization_config=hf.TorchQuantConfig())
    q.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    key = "model.layers.0.mlp.down_proj.weight_sum"
    tensors[key] = tensors[key] + 1
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.down_proj\.weight_sum must hold"):
        load(tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_reload_peak_memory_is_below_the_float_model(tmp_path):
    """A pre-quantized reload never builds float weights: its peak resident
    memory (VmHWM, reset before the load) stays below the float model's
    size. Measured in a fresh process, after a warm-up load."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(num_hidden_layers=4, hidden_size=512, intermediate_size=1536,
                                   num_attention_heads=8, num_key_value_heads=4, vocab_size=256)
    model = transformers.LlamaForCausalLM(cfg).eval()
    float_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    tq.quantize_(model, tq.QuantConfig(skip="lm_head"))
    hf.mark_quantized(model)
    model.save_pretrained(tmp_path / "q")
    del model
    script = textwrap.dedent(f"""
        import re, torch, transformers, torch_quant.hf
        def status(key):
            return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
        load = lambda: transformers.AutoModelForCausalLM.from_pretrained({str(tmp_path / "q")!r})
        load()  # warm-up: code paths, allocator
        before = status("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM to VmRSS
        m = load()
        print(status("VmHWM") - before)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    peak = int(out.stdout.split()[-1])
    print(f"reload peak {peak / 2**20:.1f} MiB, float model {float_bytes / 2**20:.1f} MiB")
    assert peak < float_bytes, (peak, float_bytes)
