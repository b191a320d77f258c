"""compressed-tensors W8A8 checkpoints: what we write is parsed by the
``compressed-tensors`` package's own config classes and decompressed by its
own compressor (and loaded by transformers) to our dequantized weights; ours
-> compressed-tensors -> ours is bit-identical; unsupported schemes are
errors naming the scheme."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import torch_quant as tq
from torch_quant.compressed_tensors import (compressed_tensors_config, load_compressed_tensors,
                                            save_compressed_tensors)

transformers = pytest.importorskip("transformers")


def tiny_llama(seed=0, tie=False):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                   tie_word_embeddings=tie)
    return transformers.LlamaForCausalLM(cfg).eval()


def calib():
    g = torch.Generator().manual_seed(7)
    return [{"input_ids": torch.randint(0, 128, (2, 16), generator=g)} for _ in range(2)]


def quantized(mode, tie=False):
    config = tq.QuantConfig(mode, skip="lm_head", smoothing="off")
    return tq.quantize_(tiny_llama(0, tie), config, calib() if mode == "auto" else None,
                        progress=False)


def logits(model):
    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("mode", ["symmetric", "asymmetric", "auto"])
def test_round_trip_is_bit_identical(tmp_path, mode, tie):
    q = quantized(mode, tie)
    save_compressed_tensors(q, tmp_path)
    fresh = tiny_llama(5, tie)
    load_compressed_tensors(fresh, tmp_path)
    assert torch.equal(logits(fresh), logits(q))
    got, want = dict(tq.nn.quantized_layers(fresh)), dict(tq.nn.quantized_layers(q))
    assert got.keys() == want.keys()
    for name, layer in want.items():
        assert got[name].act_mode == layer.act_mode
        for k, v in layer.state_dict().items():
            assert torch.equal(got[name].state_dict()[k], v), (name, k)
    if mode == "auto":  # mixed modes: one group per mode, layers by name
        cfg = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
        assert len(cfg["config_groups"]) == len({m.act_mode for m in want.values()})


@pytest.mark.parametrize("mode", ["symmetric", "asymmetric"])
def test_the_package_reads_what_we_write(tmp_path, mode):
    ct = pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    q = quantized(mode)
    save_compressed_tensors(q, tmp_path)
    cfg = QuantizationConfig.model_validate(
        json.loads((tmp_path / "config.json").read_text())["quantization_config"])
    assert cfg.format == "int-quantized" and cfg.quantization_status == "compressed"
    (scheme,) = cfg.config_groups.values()
    assert scheme.targets == ["Linear"] and "lm_head" in cfg.ignore
    assert scheme.weights.num_bits == 8 and scheme.weights.strategy == "channel"
    assert scheme.input_activations.strategy == "token" and scheme.input_activations.dynamic
    assert scheme.input_activations.symmetric == (mode == "symmetric")
    compressor = BaseCompressor.get_value_from_registry(cfg.format)
    tensors = load_file(tmp_path / "model.safetensors")
    for name, layer in tq.nn.quantized_layers(q):
        out = compressor.decompress({"weight": tensors[f"{name}.weight"],
                                     "weight_scale": tensors[f"{name}.weight_scale"]}, scheme)
        assert torch.equal(out["weight"].float(), layer.dequantized_weight()), name
    # transformers (with the package) dequantizes it to the same float model
    dense = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.float32,
        quantization_config=transformers.CompressedTensorsConfig(dequantize=True)).eval()
    for name, layer in tq.nn.quantized_layers(q):
        assert torch.equal(dense.get_submodule(name).weight, layer.dequantized_weight()), name
    assert ct.__version__


def _write(tmp_path, groups, **top):
    """A checkpoint directory with this quantization_config and the tensors of
    a symmetric per-token model."""
    save_compressed_tensors(quantized("symmetric"), tmp_path)
    path = tmp_path / "config.json"
    cfg = json.loads(path.read_text())
    cfg["quantization_config"]["config_groups"] = groups
    cfg["quantization_config"].update(top)
    path.write_text(json.dumps(cfg))
    return tmp_path


def _args(**kw):
    base = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel",
            "dynamic": False}
    return {**base, **kw}


TOKEN = _args(strategy="token", dynamic=True)


@pytest.mark.parametrize("group,top,match", [
    ({"targets": ["Linear"], "weights": _args(num_bits=4), "input_activations": TOKEN}, {},
     "weights int4 channel"),
    ({"targets": ["Linear"], "weights": _args(strategy="group", group_size=128),
      "input_activations": TOKEN}, {}, r"weights int8 group\(128\)"),
    ({"targets": ["Linear"], "weights": _args(type="float"),
      "input_activations": dict(TOKEN, type="float")}, {"format": "float-quantized"},
     "format float-quantized, weights float8"),
    ({"targets": ["Linear"], "weights": _args(), "input_activations": None},
     {"format": "pack-quantized"}, "input activations none"),
    ({"targets": ["Linear"], "weights": _args(),
      "input_activations": _args(strategy="tensor")}, {}, "input activations int8 tensor static"),
    ({"targets": ["Linear"], "weights": _args(symmetric=False), "input_activations": TOKEN}, {},
     "channel static asymmetric"),
])
def test_unsupported_schemes_are_named(tmp_path, group, top, match):
    d = _write(tmp_path, {"group_0": group}, **top)
    model = tiny_llama(2)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="unsupported scheme.*" + match):
        load_compressed_tensors(model, d)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_other_unsupported_checkpoints(tmp_path):
    d = _write(tmp_path, {"group_0": {"targets": ["Linear"], "weights": _args(),
                                      "input_activations": TOKEN}},
               kv_cache_scheme={"num_bits": 8, "type": "float"})
    with pytest.raises(ValueError, match="kv_cache_scheme"):
        load_compressed_tensors(tiny_llama(2), d)
    path = d / "config.json"
    cfg = json.loads(path.read_text())
    cfg["quantization_config"]["kv_cache_scheme"] = None
    cfg["quantization_config"]["quantization_status"] = "frozen"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="quantization_status"):
        load_compressed_tensors(tiny_llama(2), d)


def test_layers_the_format_cannot_express_are_named():
    for config, data in ((tq.QuantConfig("symmetric", "per_tensor", smoothing="off"), calib()),
                         (tq.QuantConfig("symmetric", smoothing=0.5), calib())):
        q = tq.quantize_(tiny_llama(), config, data, progress=False)
        with pytest.raises(ValueError, match="compressed_tensors: layer '.*'"):
            compressed_tensors_config(q)


def test_bf16_checkpoint_tensors_load(tmp_path):
    """llm-compressor writes scales and float tensors in the model's dtype
    (bf16): they load into a float32 model, the scales exactly."""
    from safetensors.torch import load_file, save_file
    q = quantized("symmetric")
    for _, layer in tq.nn.quantized_layers(q):  # scales that bf16 holds exactly
        layer.weight_scale.copy_(layer.weight_scale.bfloat16().float())
    save_compressed_tensors(q, tmp_path)
    t = load_file(tmp_path / "model.safetensors")
    save_file({k: v.bfloat16() if v.is_floating_point() else v for k, v in t.items()},
              tmp_path / "model.safetensors", metadata={"format": "pt"})
    fresh = tiny_llama(5)
    load_compressed_tensors(fresh, tmp_path)
    for name, layer in tq.nn.quantized_layers(q):
        got = fresh.get_submodule(name)
        assert got.weight_scale.dtype == torch.float32
        assert torch.equal(got.weight_scale, layer.weight_scale)


def test_a_layer_shared_under_two_names_round_trips(tmp_path):
    from torch import nn

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = self.a
            self.c = nn.Linear(8, 3)

        def forward(self, x):
            return self.c(self.b(torch.relu(self.a(x))))

    torch.manual_seed(0)
    q = tq.quantize_(Shared().eval(), tq.QuantConfig(smoothing="off"))
    save_compressed_tensors(q, tmp_path)
    from safetensors.torch import load_file
    assert not any(k.startswith("b.") for k in load_file(tmp_path / "model.safetensors"))
    fresh = Shared().eval()
    load_compressed_tensors(fresh, tmp_path)
    assert isinstance(fresh.a, tq.QuantLinear) and fresh.a is fresh.b
    x = torch.randn(4, 8)
    assert torch.equal(fresh(x), q(x))
