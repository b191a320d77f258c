"""Activation smoothing (torch_quant.conversion.smoothing, ``quantize_model(smoothing=)``,
``tq.smooth_model``): which folds are found from a model's behaviour, that
folding leaves the float model's outputs unchanged (up to float rounding),
that a fold which would change them is refused, and that smoothing makes the
quantized model closer to the float one where activations have outlier
channels.

Oracles: the float model itself (before any change), and our ops' own
definition for the quantize-step path (``x * input_smooth`` then the op).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torch_quant as tq
from torch_quant.conversion import smoothing
from torch_quant.nn import QuantLinear

from conftest import assert_same


def rel_err(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


class GemmaNorm(nn.Module):
    """RMSNorm with the gain stored as ``weight`` in ``x * (1 + weight)`` form."""

    def __init__(self, k):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(k))

    def forward(self, x):
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return x * (1.0 + self.weight)


class MeanGainNorm(nn.Module):
    """A 1-d ``weight`` that is not a per-channel gain: no fold form fits."""

    def __init__(self, k):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(k) + 0.5)

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:]) * self.weight.mean()


class Block(nn.Module):
    """norm -> (a, b) sharing its output; a -> act -> c; optionally the
    norm's output scaled before the layers read it (no longer the tensor
    the norm returned)."""

    def __init__(self, norm, act, k=24, h=40, scaled=False):
        super().__init__()
        self.norm, self.act, self.scaled = norm, act, scaled
        self.a = nn.Linear(k, h)
        self.b = nn.Linear(k, k)
        self.c = nn.Linear(h, k)

    def forward(self, x):
        y = self.norm(x)
        if self.scaled:
            y = y * 2.0
        return x + self.b(y) + self.c(self.act(self.a(y)))


def outlier_inputs(gen, rows=64, k=24, channels=(3, 17), size=30.0):
    x = torch.randn(rows, k, generator=gen)
    x[:, list(channels)] *= size
    return x


def make(norm, act, seed=0, scaled=False, outlier_gain=True):
    torch.manual_seed(seed)
    m = Block(norm, act, scaled=scaled).eval()
    with torch.no_grad():
        if isinstance(norm, nn.LayerNorm):
            norm.weight.copy_(torch.rand(24) + 0.5)
            norm.bias.copy_(torch.randn(24) * 0.1)
            if outlier_gain:
                norm.weight[[3, 17]] = 25.0  # outlier channels after the norm
        elif isinstance(norm, GemmaNorm):
            norm.weight.copy_(torch.rand(24) - 0.5)
            if outlier_gain:
                norm.weight[[3, 17]] = 24.0
            norm.weight[[5, 6]] = -1.0  # gain exactly 0: those channels are always 0
    return m


def kinds(groups):
    return {tuple(g.members): (g.kind, g.source) for g in groups}


def test_find_groups_norm_and_relu_pair(gen):
    m = make(nn.LayerNorm(24), nn.ReLU())
    layers = {n: m.get_submodule(n) for n in ("a", "b", "c")}
    groups = smoothing.find_groups(m, layers, outlier_inputs(gen))
    # a and b read the norm's output; c's input is relu(a(y)), channel by
    # channel proportional to a's rows for positive factors
    assert kinds(groups) == {("a", "b"): ("norm", "norm"), ("c",): ("linear", "a")}
    (pair,) = [g for g in groups if g.kind == "linear"]
    assert torch.equal(pair.channel_map, torch.arange(40))


@pytest.mark.parametrize("act", [nn.GELU(), nn.Tanh()], ids=["gelu", "tanh"])
def test_find_groups_no_pair_through_a_nonlinear_activation(gen, act):
    m = make(nn.LayerNorm(24), act)
    layers = {n: m.get_submodule(n) for n in ("a", "b", "c")}
    assert kinds(smoothing.find_groups(m, layers, outlier_inputs(gen))) == {
        ("a", "b"): ("norm", "norm"), ("c",): ("input", "")}


def test_find_groups_not_from_names_a_modified_norm_output_is_no_norm_input(gen):
    m = make(nn.LayerNorm(24), nn.GELU(), scaled=True)
    layers = {n: m.get_submodule(n) for n in ("a", "b", "c")}
    assert {g.kind for g in smoothing.find_groups(m, layers, outlier_inputs(gen))} == {"input"}


def _float_check(m, gen, alpha=0.5):
    x = outlier_inputs(gen)
    ref = copy.deepcopy(m)
    info = tq.smooth_model(m, [x, outlier_inputs(gen)], alpha=alpha)
    with torch.no_grad():
        y, y_ref = m(x), ref(x)
        changed = any(not torch.equal(p, q) for p, q in zip(m.parameters(), ref.parameters()))
    return info, y, y_ref, changed


@pytest.mark.parametrize("norm", ["layernorm", "gemma"])
def test_smooth_model_changes_outputs_by_rounding_only(gen, norm):
    m = make(nn.LayerNorm(24) if norm == "layernorm" else GemmaNorm(24), nn.ReLU())
    probe = outlier_inputs(gen)
    with torch.no_grad():
        before = m.norm(probe).abs().amax(0)
    info, y, y_ref, changed = _float_check(m, gen)
    assert changed  # weights were folded ...
    assert info["a"]["kind"] == "norm" and info["c"]["kind"] == "linear"
    assert rel_err(y, y_ref) < 1e-5  # ... and the float outputs are the same
    assert torch.isfinite(y).all()
    # the norm's form was recognised: its outlier channels are now flatter
    with torch.no_grad():
        after = m.norm(probe).abs().amax(0)
    ratio = lambda t: float(t[[3, 17]].max() / t.median())  # noqa: E731
    assert ratio(after) < 0.6 * ratio(before), (ratio(after), ratio(before))


def test_smooth_model_gemma_zero_gains_get_finite_factors(gen):
    m = make(GemmaNorm(24), nn.ReLU())
    x = outlier_inputs(gen)
    assert (m.norm(x)[:, [5, 6]] == 0).all()  # max|X_j| = 0 on those channels
    info, y, y_ref, _ = _float_check(m, gen)
    assert torch.isfinite(m.norm.weight).all() and torch.isfinite(m.a.weight).all()
    assert rel_err(y, y_ref) < 1e-5


def test_smooth_model_refuses_a_fold_that_changes_the_model(gen):
    m = make(MeanGainNorm(24), nn.ReLU())
    ref = copy.deepcopy(m)
    info, y, y_ref, _ = _float_check(m, gen)
    assert info["a"]["kind"] == "input" and info["b"]["kind"] == "input"
    assert torch.equal(m.norm.weight, ref.norm.weight)  # undone / never applied
    assert rel_err(y, y_ref) < 1e-5


def test_smooth_model_llama_gqa(gen):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
    torch.manual_seed(0)
    m = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n:
                p.copy_(torch.rand_like(p) * 2 + 0.1)
    ids = [torch.randint(0, 64, (1, 40), generator=gen) for _ in range(3)]
    ref = copy.deepcopy(m)
    info = tq.smooth_model(m, ids, alpha=0.5)
    for i in range(2):
        p = f"model.layers.{i}."
        for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            assert info[p + n]["kind"] == "norm" and info[p + n]["source"] == p + "input_layernorm"
        # o_proj reads the 4 query heads' outputs, each from one of 2 value heads
        assert info[p + "self_attn.o_proj"]["kind"] == "linear"
        assert info[p + "self_attn.o_proj"]["source"] == p + "self_attn.v_proj"
        assert info[p + "mlp.down_proj"]["source"] == p + "mlp.up_proj"
    assert info["lm_head"]["kind"] == "input"
    with torch.no_grad():
        assert rel_err(m(ids[0]).logits, ref(ids[0]).logits) < 1e-5


@pytest.mark.parametrize("mode", ["symmetric", "asymmetric"])
def test_smoothing_makes_the_quantized_model_closer(gen, mode):
    m = make(nn.LayerNorm(24), nn.ReLU())
    calib = [outlier_inputs(gen) for _ in range(4)]
    x = outlier_inputs(gen)
    with torch.no_grad():
        y = m(x)
    plain = tq.quantize_model(copy.deepcopy(m), mode, calibration_data=calib, smoothing=None,
                              progress=False)
    smooth = tq.quantize_model(copy.deepcopy(m), mode, calibration_data=calib, progress=False)
    rep = {r.name: r for r in tq.quantization_report(smooth)}
    assert rep["a"].smoothing["kind"] == "norm" and rep["a"].smoothing["alpha"] is not None
    assert all(r.smoothing is None for r in tq.quantization_report(plain))
    with torch.no_grad():
        e_plain, e_smooth = rel_err(plain(x), y), rel_err(smooth(x), y)
    assert e_smooth < 0.5 * e_plain, (e_smooth, e_plain)


@pytest.mark.parametrize("granularity", ["per_token", "per_tensor"])
def test_quantize_step_smoothing(gen, granularity, tmp_path):
    """GELU between a and c: c's factors cannot be folded; they go into its
    quantize step (input_smooth), which saves and loads."""
    m = make(nn.LayerNorm(24), nn.GELU())
    calib = [outlier_inputs(gen) for _ in range(3)]
    q = tq.quantize_model(copy.deepcopy(m), "asymmetric", granularity, calib, smoothing=0.5,
                          progress=False)
    c = q.c
    assert isinstance(c, QuantLinear) and "input_smooth" in c._buffers
    assert "input_smooth" not in q.a._buffers  # folded into the norm instead
    assert c.stats["smoothing"]["kind"] == "input"
    with torch.no_grad():  # c's inputs as the float model makes them
        h = m.act(m.a(m.norm(outlier_inputs(gen, rows=5))))
        got = c(h)
        if granularity == "per_token":
            want = tq.dynamic_quantized_linear(h * c.input_smooth, c.plain_weight(),
                                               c.weight_scale, c.bias, None, "asymmetric")
        else:
            x_q = tq.quantize(h * c.input_smooth, c.input_scale, c.input_zero_point, "asymmetric")
            want = tq.quantized_linear(x_q, c.input_scale, c.input_zero_point, c.plain_weight(),
                                       c.weight_scale, c.bias)
    assert_same(got, want, "quantize-step smoothing")
    # the inverse factors are in the weight: c approximates the float layer
    with torch.no_grad():
        assert rel_err(got, m.c(h)) < 0.05
    path = tmp_path / "m.safetensors"
    tq.save(q, path)
    fresh = tq.load(copy.deepcopy(m), path)
    assert "input_smooth" in fresh.c._buffers
    x = outlier_inputs(gen)
    with torch.no_grad():
        assert torch.equal(fresh(x), q(x))


def test_smoothing_argument_errors(gen):
    m = make(nn.LayerNorm(24), nn.ReLU())
    calib = [outlier_inputs(gen)]
    for bad in ("yes", 1.5, -0.1, True, [0.5]):
        with pytest.raises((ValueError, TypeError), match="smoothing"):
            tq.quantize_model(copy.deepcopy(m), "symmetric", calibration_data=calib,
                              smoothing=bad, progress=False)
    with pytest.raises(ValueError, match="calibration_data"):
        tq.quantize_model(copy.deepcopy(m), "symmetric", smoothing="search", progress=False)
    with pytest.raises(ValueError, match="calibration_data"):
        tq.quantize_model(copy.deepcopy(m), "symmetric", smoothing=0.5, progress=False)
    with pytest.raises(ValueError, match="alpha"):
        tq.smooth_model(copy.deepcopy(m), calib, alpha=2.0)
    # without calibration data the default does not smooth (and needs none)
    q = tq.quantize_model(copy.deepcopy(m), "symmetric", progress=False)
    assert all(r.smoothing is None for r in tq.quantization_report(q))


def test_factors_clamped_and_shared_by_a_channel_map():
    act = torch.tensor([0.0, 4.0, 1.0, 9.0])
    w = torch.tensor([[1.0, 0.0, 2.0, 1.0]])
    s = smoothing.smoothing_factors(act, [w], 0.5)
    assert torch.isfinite(s).all() and (s > 0).all()
    assert abs(float(torch.log(s).mean())) < 1e-5  # geometric mean 1
    # channels 0 and 2 both come from row 1 of the previous layer: one factor
    cmap = torch.tensor([1, 0, 1, 2])
    s = smoothing.smoothing_factors(act, [w], 0.5, cmap, 3)
    assert s[0] == s[2]


def test_quantize_model_is_deterministic(gen):
    """Two conversions of the same model with the same data give the same
    buffers bit for bit (the calibration sample included: repeated reservoir
    slots used to be written in an unspecified order)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
    torch.manual_seed(0)
    m = transformers.LlamaForCausalLM(cfg).eval()
    batches = [torch.randint(0, 64, (1, 100), generator=gen) for _ in range(6)]
    a = tq.quantize_model(copy.deepcopy(m), "asymmetric", calibration_data=batches, progress=False)
    b = tq.quantize_model(copy.deepcopy(m), "asymmetric", calibration_data=batches, progress=False)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [r.to_dict() for r in tq.quantization_report(a)] == \
        [r.to_dict() for r in tq.quantization_report(b)]


class TwoLayers(nn.Module):
    def __init__(self, k=64, h=48):
        super().__init__()
        self.fc1 = nn.Linear(k, h)
        self.fc2 = nn.Linear(h, k)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def roaming_outliers(gen, rows=256, k=64, size=60.0):
    """Each row has its own outlier channel: no per-channel factor can
    flatten that, a rotation can."""
    x = torch.randn(rows, k, generator=gen)
    x[torch.arange(rows), torch.randint(0, k, (rows,), generator=gen)] *= size
    return x


@pytest.mark.parametrize("mode", ["symmetric", "asymmetric", "auto"])
def test_search_rotates_inputs_whose_outliers_roam(gen, mode, tmp_path):
    """The search picks a Hadamard rotation for a layer whose outlier channel
    changes from row to row, that layer ends up closer to float than without
    smoothing, the report says so, and the rotation saves and loads."""
    torch.manual_seed(0)
    m = TwoLayers().eval()
    calib = [roaming_outliers(gen) for _ in range(2)]
    q = tq.quantize_model(copy.deepcopy(m), mode, calibration_data=calib, progress=False)
    plain = tq.quantize_model(copy.deepcopy(m), mode, calibration_data=calib, smoothing=None,
                              progress=False)
    rep = {r.name: r.smoothing for r in tq.quantization_report(q)}
    assert rep["fc1"]["hadamard_block"] == 64 and rep["fc1"]["alpha"] is None
    assert q.fc1.hadamard_block == 64 and plain.fc1.hadamard_block == 0
    x = roaming_outliers(gen)
    with torch.no_grad():
        want = m.fc1(x)
        assert rel_err(q.fc1(x), want) < 0.75 * rel_err(plain.fc1(x), want)
        path = tmp_path / "m.safetensors"
        tq.save(q, path)
        fresh = tq.load(copy.deepcopy(m), path)
        assert fresh.fc1.hadamard_block == 64
        assert torch.equal(fresh(x), q(x))
    # a fixed alpha is smoothing only
    fixed = tq.quantize_model(copy.deepcopy(m), "symmetric", calibration_data=calib,
                              smoothing=0.5, progress=False)
    assert fixed.fc1.hadamard_block == 0


@pytest.mark.parametrize("mode", ["symmetric", "asymmetric"])
def test_static_rotation_uses_the_rotated_inputs_range(gen, mode):
    """Per tensor, a rotated layer's calibrated range is the exact min and
    max of its rotated calibration inputs (all of them, not the sample), and
    the layer quantizes the rotated input with it."""
    torch.manual_seed(0)
    m = TwoLayers().eval()
    calib = [roaming_outliers(gen, rows=300) for _ in range(2)]
    q = tq.quantize_model(copy.deepcopy(m), mode, "per_tensor", calib, progress=False)
    assert q.fc1.hadamard_block == 64
    x_all = torch.cat(calib)
    rotated = tq.hadamard.hadamard_rows(x_all, 64)
    assert q.fc1.stats["calibrated_range"] == (float(rotated.min()), float(rotated.max()))
    x = roaming_outliers(gen)
    with torch.no_grad():
        x_q = tq.quantize(tq.hadamard.hadamard_rows(x, 64), q.fc1.input_scale,
                          q.fc1.input_zero_point, mode)
        want = tq.quantized_linear(x_q, q.fc1.input_scale, q.fc1.input_zero_point,
                                   q.fc1.plain_weight(), q.fc1.weight_scale, q.fc1.bias)
        assert_same(q.fc1(x), want, "static rotation")
        plain = tq.quantize_model(copy.deepcopy(m), mode, "per_tensor", calib, smoothing=None,
                                  progress=False)
        assert rel_err(q.fc1(x), m.fc1(x)) < 0.75 * rel_err(plain.fc1(x), m.fc1(x))


def test_hadamard_layer_arguments():
    lin = nn.Linear(24, 5)
    for bad in (3, 16, 1, -8):
        with pytest.raises(ValueError, match="hadamard_block"):
            QuantLinear.from_float(lin, "symmetric", hadamard_block=bad)
    with pytest.raises(TypeError, match="hadamard_block"):
        QuantLinear.from_float(lin, "symmetric", hadamard_block=8.0)
    q = QuantLinear.from_float(lin, "asymmetric", hadamard_block=8)
    x = torch.randn(7, 24)
    with torch.no_grad():
        assert rel_err(q(x), lin(x)) < 0.02
    assert "hadamard_block=8" in repr(q)


def test_global_undo_keeps_a_groups_rotation(gen, monkeypatch):
    """When the model's output check fails after folding, every fold is undone
    and each multi-layer group is split into one quantize-step group per
    layer: a rotation chosen for the group (a and b, after the norm) must
    survive on each of its layers, and the model must be as it was."""
    from torch_quant.conversion import smoothing_groups
    m = make(nn.LayerNorm(24), nn.ReLU())
    ref = copy.deepcopy(m)
    layers = {n: m.get_submodule(n) for n in ("a", "b", "c")}
    x = outlier_inputs(gen)
    groups = smoothing.find_groups(m, layers, x)
    groups = [replace(g, hadamard_block=8) if g.members == ("a", "b")  # rotated: no factors
              else replace(g, alpha=0.5, factors=torch.rand(40, generator=gen) + 0.5)
              for g in groups]  # c: folded, then undone
    # the model's output "changed": the global undo path
    monkeypatch.setattr(smoothing_groups, "outputs_close", lambda a, b, rtol=1e-3: False)
    out = smoothing_groups.fold(m, groups, x)
    by_layer = {n: g for g in out for n in g.members}
    assert sorted(by_layer) == ["a", "b", "c"]
    for n in ("a", "b"):
        assert by_layer[n].members == (n,) and by_layer[n].kind == "input"
        assert by_layer[n].hadamard_block == 8
    assert by_layer["c"].kind == "input" and by_layer["c"].hadamard_block == 0
    for (name, p), q in zip(m.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(p, q), name


def _both_folded(m, gen, x):
    """The norm group (a, b) and the pair (c after a) with factors: a is both
    a member of one fold (its columns) and the source of the other (its rows)."""
    layers = {n: m.get_submodule(n) for n in ("a", "b", "c")}
    return [replace(g, alpha=0.5, factors=torch.rand(24 if g.kind == "norm" else 40,
                                                     generator=gen) + 0.5)
            for g in smoothing.find_groups(m, layers, x)]


def test_global_undo_restores_a_layer_two_folds_share(gen, monkeypatch):
    """Undoing every fold must give back the model bit for bit, also where a
    layer's columns and rows were scaled by two different groups (undone in
    the reverse order of folding)."""
    from torch_quant.conversion import smoothing_groups
    m = make(nn.LayerNorm(24), nn.ReLU())
    ref = copy.deepcopy(m)
    x = outlier_inputs(gen)
    groups = _both_folded(m, gen, x)
    assert {g.kind for g in groups} == {"norm", "linear"}
    real = smoothing_groups.outputs_close
    calls = []

    def output_check_fails(a, b, rtol=1e-3):  # three layers' input checks, then the output's
        calls.append(1)
        return real(a, b, rtol) and len(calls) <= 3
    monkeypatch.setattr(smoothing_groups, "outputs_close", output_check_fails)
    out = smoothing_groups.fold(m, groups, x)
    assert len(calls) == 4 and {g.kind for g in out} == {"input"}
    for (name, p), q in zip(m.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(p, q), name


def test_a_group_that_fails_its_check_leaves_the_others_folded_exactly(gen, monkeypatch):
    """When one group's input check fails, the model is refolded without it:
    the other group's fold (here the pair c after a, whose source a is a
    member of the failed norm group) stays exact and the model's output is
    unchanged."""
    from torch_quant.conversion import smoothing_groups
    m = make(nn.LayerNorm(24), nn.ReLU())
    ref = copy.deepcopy(m)
    x = outlier_inputs(gen)
    groups = _both_folded(m, gen, x)
    pair = next(g for g in groups if g.kind == "linear")
    real = smoothing_groups.outputs_close
    calls = []

    def first_check_fails(a, b, rtol=1e-3):  # the norm group's first member, first time
        calls.append(1)
        return real(a, b, rtol) and len(calls) != 1
    monkeypatch.setattr(smoothing_groups, "outputs_close", first_check_fails)
    out = smoothing_groups.fold(m, groups, x)
    by_layer = {n: g for g in out for n in g.members}
    assert by_layer["a"].kind == by_layer["b"].kind == "input"
    assert by_layer["c"].kind == "linear" and by_layer["c"].source == "a"
    # a's rows divided by the pair's factors (its columns untouched), c's columns multiplied
    cmap = pair.channel_map
    r = 1.0 / pair.factors[cmap]
    assert torch.allclose(m.a.weight, ref.a.weight * r[:, None], rtol=1e-6)
    assert torch.equal(m.b.weight, ref.b.weight)
    assert torch.allclose(m.c.weight, ref.c.weight * pair.factors, rtol=1e-6)
    with torch.no_grad():
        assert torch.allclose(m(x), ref(x), rtol=1e-4, atol=1e-5)
