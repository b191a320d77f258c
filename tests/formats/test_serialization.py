"""Saving quantized models (docs/semantics.md, "Python API"): state_dict with torch.load(weights_only=True),
tq.save / tq.load with safetensors, and bad files that must leave the model untouched."""

from __future__ import annotations

import copy
import json
import os
import re

import pytest
import torch
from torch import nn

import torch_quant as tq
import torch_quant.nn
from torch_quant.nn import PackedWeight, QuantLinear

from conftest import assert_untouched, snapshot

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(17, 33), nn.ReLU(), nn.Linear(33, 7, bias=False),
                         nn.GELU(), nn.Linear(7, 5)).eval()


def calib(n=3, k=17, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, k, generator=g) for _ in range(n)]


def tiny_gpt2(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


SETTINGS = [("symmetric", "per_token"), ("asymmetric", "per_token"), ("auto", "per_token"),
            ("symmetric", "per_tensor"), ("asymmetric", "per_tensor"), ("auto", "per_tensor")]


@pytest.mark.parametrize("mode,gran", SETTINGS)
def test_state_dict_round_trip_weights_only(tmp_path, mode, gran):
    src = tq.quantize_model(mlp(0), mode, gran, calib(), progress=False)
    torch.save(src.state_dict(), tmp_path / "sd.pt")
    # The same settings (auto: the same per-layer choices), different weights
    # and calibration data, so that every buffer differs before loading.
    dst = copy.deepcopy(src)
    with torch.no_grad():
        for t in dst.state_dict().values():
            t.copy_(torch.ones_like(t))
    dst.load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=True))
    x = torch.randn(6, 17)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


@pytest.mark.parametrize("mode,gran", SETTINGS)
def test_save_load_into_float_model(tmp_path, mode, gran):
    src = tq.quantize_model(mlp(0), mode, gran, calib(), skip="4", progress=False)
    tq.save(src, tmp_path / "m.safetensors")
    dst = mlp(3)  # float, other weights
    assert tq.load(dst, tmp_path / "m.safetensors") is dst
    assert isinstance(dst[0], QuantLinear) and isinstance(dst[2], QuantLinear)
    assert isinstance(dst[4], nn.Linear) and not isinstance(dst[4], QuantLinear)  # skipped
    for a, b in ((src[0], dst[0]), (src[2], dst[2])):
        assert (a.act_mode, a.act_granularity) == (b.act_mode, b.act_granularity)
    x = torch.randn(2, 3, 17)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_save_load_into_quantized_model(tmp_path):
    src = tq.quantize_model(mlp(0), "asymmetric", "per_tensor", calib(), smoothing=None,
                            progress=False)
    tq.save(src, tmp_path / "m.safetensors")
    dst = tq.quantize_model(mlp(1), "asymmetric", "per_tensor", calib(seed=4), smoothing=None,
                            progress=False)
    tq.load(dst, tmp_path / "m.safetensors")
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_file_metadata_and_contents(tmp_path):
    src = tq.quantize_model(mlp(0), "auto", "per_token", calib(), smoothing=None, progress=False)
    tq.save(src, tmp_path / "m.safetensors")
    from safetensors import safe_open
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    layers = json.loads(meta["layers"])
    assert set(layers) == {"0", "2", "4"}
    assert layers["2"] == {"act_mode": src[2].act_mode, "act_granularity": "per_token",
                           "in_features": 33, "out_features": 7, "bias": False}
    assert meta["torch_quant_version"] == tq.__version__
    assert keys == set(src.state_dict())
    loaded = safetensors_torch.load_file(str(tmp_path / "m.safetensors"))
    assert loaded["0.weight"].dtype == torch.int8
    assert torch.equal(loaded["0.weight"], src[0].plain_weight())  # the plain layout


def test_tied_weights_gpt2(tmp_path):
    src = tiny_gpt2(0)
    ids = torch.randint(0, 64, (2, 9))
    tq.quantize_model(src, "symmetric", skip="lm_head", progress=False)
    assert src.lm_head.weight.data_ptr() == src.transformer.wte.weight.data_ptr()  # still tied
    tq.save(src, tmp_path / "g.safetensors")
    dst = tiny_gpt2(7)
    tq.load(dst, tmp_path / "g.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(dst(ids).logits, src(ids).logits, rtol=0, atol=0)
    assert dst.lm_head.weight.data_ptr() == dst.transformer.wte.weight.data_ptr()


def test_save_is_atomic_and_needs_quantized_layers(tmp_path):
    with pytest.raises(ValueError, match=r"tq\.save: .*no QuantLinear"):
        tq.save(mlp(0), tmp_path / "x.safetensors")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------
# bad files: a clear ValueError, and the model exactly as it was


def _good_file(tmp_path):
    src = tq.quantize_model(mlp(0), "symmetric", "per_tensor", calib(), progress=False)
    path = tmp_path / "good.safetensors"
    tq.save(src, path)
    return path


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.99])
@pytest.mark.parametrize("target", ["float", "quantized"])
def test_truncated_file(tmp_path, cut, target):
    data = _good_file(tmp_path).read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: int(len(data) * cut)])
    model = mlp(2) if target == "float" else tq.quantize_model(
        mlp(2), "symmetric", "per_tensor", calib(), progress=False)
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"tq\.load: .*cut\.safetensors"):
        tq.load(model, bad)
    assert_untouched(model, snap)


def test_foreign_files(tmp_path):
    model = mlp(2)
    snap = snapshot(model)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00not a safetensors file at all" * 10)
    with pytest.raises(ValueError, match="tq.load: cannot read"):
        tq.load(model, junk)
    # a valid safetensors file that tq.save did not write
    other = tmp_path / "other.safetensors"
    safetensors_torch.save_file({"0.weight": torch.zeros(33, 17)}, str(other))
    with pytest.raises(ValueError, match="not one written by tq.save"):
        tq.load(model, other)
    with pytest.raises(ValueError, match="no such file"):
        tq.load(model, tmp_path / "missing.safetensors")
    assert_untouched(model, snap)


def test_damaged_metadata(tmp_path):
    good = _good_file(tmp_path)
    tensors = safetensors_torch.load_file(str(good))
    from safetensors import safe_open
    with safe_open(str(good), framework="pt") as f:
        meta = dict(f.metadata())
    model = mlp(2)
    snap = snapshot(model)
    layers = json.loads(meta["layers"])
    name, good_settings = next(iter(layers.items()))

    def with_layer(**change):
        settings = {k: v for k, v in good_settings.items() if change.get(k, 0) is not None}
        settings.update({k: v for k, v in change.items() if v is not None})
        return {"layers": json.dumps({**layers, name: settings})}
    damages = [
        {"layers": "{not json"},
        {"layers": json.dumps({"0": {"act_mode": "sideways"}})},
        {"aliases": json.dumps({"x.weight": "nowhere"})},
        # malformed shapes of the metadata itself
        *({"layers": json.dumps(v)} for v in ([1, 2], 7, "layers", None)),
        *({"aliases": json.dumps(v)} for v in ([1], 3, {"a": 1})),
        {"layers": json.dumps({name: [1, 2]})},
        # a layer entry missing a key a float target needs, or with a wrong type
        *(with_layer(**{k: None}) for k in ("in_features", "out_features", "bias",
                                            "act_mode", "act_granularity")),
        with_layer(in_features="17"), with_layer(bias=1), with_layer(out_features=True),
        with_layer(in_features=-1), with_layer(colour="blue"),
        with_layer(hadamard_block=3), with_layer(smooth="yes"),
    ]
    for damage in damages:
        bad = tmp_path / "meta.safetensors"
        safetensors_torch.save_file(tensors, str(bad), metadata={**meta, **damage})
        with pytest.raises(ValueError, match="tq.load: .*damaged metadata"):
            tq.load(model, bad)
        assert_untouched(model, snap)


def test_mismatched_models(tmp_path):
    path = _good_file(tmp_path)
    # other shapes
    wrong = nn.Sequential(nn.Linear(17, 32), nn.ReLU(), nn.Linear(32, 7, bias=False),
                          nn.GELU(), nn.Linear(7, 5)).eval()
    snap = snapshot(wrong)
    with pytest.raises(ValueError, match=r"tq\.load: .*layer '0'"):
        tq.load(wrong, path)
    assert_untouched(wrong, snap)
    # quantized with other settings
    other = tq.quantize_model(mlp(0), "asymmetric", "per_tensor", calib(), progress=False)
    snap = snapshot(other)
    with pytest.raises(ValueError, match="quantized as"):
        tq.load(other, path)
    assert_untouched(other, snap)
    # a model without one of the layers
    short = nn.Sequential(nn.Linear(17, 33), nn.ReLU(), nn.Linear(33, 7, bias=False)).eval()
    snap = snapshot(short)
    with pytest.raises(ValueError, match="does not have"):
        tq.load(short, path)
    assert_untouched(short, snap)
    # an extra tensor the model does not have
    tensors = safetensors_torch.load_file(str(path))
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    extra = tmp_path / "extra.safetensors"
    safetensors_torch.save_file({**tensors, "9.weight": torch.zeros(2)}, str(extra), metadata=meta)
    model = mlp(3)
    snap = snapshot(model)
    with pytest.raises(ValueError, match="unexpected"):
        tq.load(model, extra)
    assert_untouched(model, snap)
    # a buffer with the wrong dtype
    swapped = tmp_path / "dtype.safetensors"
    safetensors_torch.save_file({**tensors, "0.weight_sum": tensors["0.weight_sum"].long()},
                                str(swapped), metadata=meta)
    with pytest.raises(ValueError, match="0.weight_sum"):
        tq.load(model, swapped)
    assert_untouched(model, snap)


def _bad_values(tensors):
    """(description, key, changed tensors) for every value invariant of a
    layer's buffers; the model in _good_file is symmetric per tensor, with
    layer '0' holding a bias and '2' none."""
    def changed(key, f):
        t = tensors[key].clone()
        f(t)
        return {**tensors, key: t}

    def setter(i, v):
        def f(t):
            t.view(-1)[i] = v
        return f
    cases = []
    for v in (float("nan"), 0.0, -1.0, float("inf"), 1e-40):
        cases.append((f"weight_scale {v}", "0.weight_scale", changed("0.weight_scale", setter(3, v))))
        cases.append((f"input_scale {v}", "4.input_scale", changed("4.input_scale", setter(0, v))))
    for v in (128, -1, 300):
        cases.append((f"input_zero_point {v}", "2.input_zero_point",
                      changed("2.input_zero_point", setter(0, v))))
    cases.append(("weight_sum off by one", "0.weight_sum", changed("0.weight_sum", setter(5, 1 + int(tensors["0.weight_sum"][5])))))
    cases.append(("weight changed under its sums", "2.weight_sum", changed("2.weight", setter(0, 1 + int(tensors["2.weight"].view(-1)[0]) if int(tensors["2.weight"].view(-1)[0]) < 127 else 0))))
    cases.append(("bias NaN", "0.bias", changed("0.bias", setter(1, float("nan")))))
    return cases


@pytest.mark.parametrize("target", ["float", "quantized"])
def test_invalid_values_are_rejected_before_anything_changes(tmp_path, target):
    """tq.load checks values, not only keys, shapes and dtypes: NaN, 0,
    negative, inf or denormal (infinite reciprocal) scales, a zero point
    outside its mode's range (the file says symmetric: only 0), weight sums
    that are not the weight's row sums, a NaN bias. Each is a ValueError
    naming the key, and the model (float or quantized) is left as it was."""
    good = _good_file(tmp_path)
    tensors = safetensors_torch.load_file(str(good))
    from safetensors import safe_open
    with safe_open(str(good), framework="pt") as f:
        meta = dict(f.metadata())
    model = (mlp(5) if target == "float"
             else tq.quantize_model(mlp(5), "symmetric", "per_tensor", calib(), progress=False))
    snap = snapshot(model)
    for _what, key, bad_tensors in _bad_values(tensors):
        bad = tmp_path / "bad.safetensors"
        safetensors_torch.save_file(bad_tensors, str(bad), metadata=meta)
        with pytest.raises(ValueError, match=r"tq\.load: .*" + re.escape(key)):
            tq.load(model, bad)
        assert_untouched(model, snap)
        # load_state_dict on a quantized layer checks the same before the
        # layer changes (layer by layer, as torch's load_state_dict loads)
        if target == "quantized":
            layer = model.get_submodule(key.split(".")[0])
            before = snapshot(layer)
            own = {k.split(".", 1)[1]: v for k, v in bad_tensors.items()
                   if k.startswith(key.split(".")[0] + ".")}
            with pytest.raises(ValueError, match=r"load_state_dict: " + re.escape(key.split(".")[1])):
                layer.load_state_dict(own)
            assert_untouched(layer, before)
    tq.load(model, good)  # and the good file still loads


def test_asymmetric_zero_points_are_checked_against_their_range(tmp_path):
    src = tq.quantize_model(mlp(0), "asymmetric", "per_tensor", calib(), progress=False)
    path = tmp_path / "asym.safetensors"
    tq.save(src, path)
    tensors = safetensors_torch.load_file(str(path))
    model = tq.quantize_model(mlp(1), "asymmetric", "per_tensor", calib(), progress=False)
    for z in (0, 255):
        model.load_state_dict({**tensors, "0.input_zero_point": torch.tensor(z, dtype=torch.int32)})
    for z in (-1, 256):
        with pytest.raises(ValueError, match=r"0\.input_zero_point must be in \[0, 255\]"):
            model.load_state_dict({**tensors, "0.input_zero_point": torch.tensor(z, dtype=torch.int32)})


class _Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = self.a  # the same module under two names
        self.c = nn.Linear(8, 3)

    def forward(self, x):
        return self.c(self.b(torch.relu(self.a(x))))


@pytest.mark.parametrize("gran", ["per_token", "per_tensor"])
def test_shared_layer_save_load_into_fresh_float_model(tmp_path, gran):
    torch.manual_seed(0)
    src = tq.quantize_model(_Shared().eval(), "symmetric", gran,
                            calibration_data=[torch.randn(4, 8)] if gran == "per_tensor" else None,
                            progress=False)
    assert src.a is src.b
    path = tmp_path / "shared.safetensors"
    tq.save(src, path)
    fresh = _Shared().eval()
    tq.load(fresh, path)
    assert isinstance(fresh.a, QuantLinear) and fresh.a is fresh.b
    x = torch.randn(5, 8)
    assert torch.equal(fresh(x), src(x))


def test_whole_model_load_state_dict_checks_every_layer_first():
    """A model converted by quantize_ (or loaded by tq.load) checks every
    quantized layer's entries before any module loads: a bad value in its
    last layer leaves the first one (and everything else) as it was."""
    model = tq.quantize_model(mlp(0), "symmetric", "per_tensor", calib(), progress=False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["0.bias"] += 1.0
    state["4.input_scale"].fill_(float("nan"))
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"load_state_dict: 4\.input_scale must be finite"):
        model.load_state_dict(state)
    assert_untouched(model, snap)
    state["4.input_scale"] = model.state_dict()["4.input_scale"]
    model.load_state_dict(state)  # the good values load
    assert torch.equal(model[0].bias, snap[1]["0.bias"] + 1.0)


def test_every_load_passes_over_each_weight_once_for_its_sums(tmp_path, monkeypatch):
    """The weight-sum check reads each layer's weight once per load: the
    whole-model pre-hook's check (or tq.load's own), while the layer's load
    takes the sums from the packing it does anyway (no pass of its own)."""
    src = tq.quantize_model(mlp(0), "symmetric", "per_tensor", calib(), progress=False)
    path = tmp_path / "m.safetensors"
    tq.save(src, path)
    passes = []
    real = torch_quant.nn.row_sums

    def counted(w):
        if not isinstance(w, PackedWeight):  # a plain weight: a pass (a packed one holds its sums)
            passes.append(tuple(w.shape))
        return real(w)
    monkeypatch.setattr(torch_quant.nn, "row_sums", counted)
    layers = [(33, 17), (7, 33), (5, 7)]

    model = tq.quantize_model(mlp(1), "symmetric", "per_tensor", calib(), progress=False)
    passes.clear()
    model.load_state_dict(src.state_dict())
    assert sorted(passes) == sorted(layers)
    for target in (model, mlp(2)):  # quantized, and float
        passes.clear()
        tq.load(target, path)
        assert sorted(passes) == sorted(layers)
        x = calib(1)[0]
        assert torch.equal(target(x), src(x))
    passes.clear()
    model[0].load_state_dict({k.split(".", 1)[1]: v for k, v in src.state_dict().items()
                              if k.startswith("0.")})
    assert passes == []
    # and the packed sums the layer's load compares are the weight's
    w = torch.randint(-128, 128, (37, 21), dtype=torch.int8)
    for n in (0, 1, 16, 17, 37):
        assert torch.equal(real(PackedWeight.pack(w[:n])), real(w[:n])), n
