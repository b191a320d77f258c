"""quantize_ / quantize_model (docs/conversion.md): which layers are replaced,
``act_mode="auto"``, argument errors, skip, tiny Hugging Face models."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

import torch_quant as tq
from torch_quant.ops import reference as oracle
from torch_quant.nn import QuantLinear

from conftest import MODES, assert_same, torch_per_channel
from model_helpers import (rel_err, observer_qparams, capture_inputs, linear_names, is_hf_conv1d, relu_mlp, gelu_mlp, centred, quantized, no_hooks_left, _transformers, EPS, GRANULARITIES, Tiny, ALL_TINY, MLP_TINY)


# ---------------------------------------------------------------------------
# 3. quantize_model on MLPs


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("act_mode", [*MODES, "auto"])
@pytest.mark.parametrize("factory", [relu_mlp, gelu_mlp], ids=["relu", "gelu"])
def test_quantize_model_replaces_every_linear(gen, factory, act_mode, granularity):
    model = factory()
    ref = copy.deepcopy(model)
    acts = [model[1], model[3]]
    names = linear_names(model)
    assert len(names) == 3
    data = [torch.randn(7, 17, generator=gen), torch.randn(2, 5, 17, generator=gen)]
    need = act_mode == "auto" or granularity == "per_tensor"
    out = tq.quantize_model(model, act_mode, granularity,
                            calibration_data=data if need else None, progress=False)
    assert out is model
    q = quantized(model)
    assert sorted(q) == sorted(names)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert model[1] is acts[0] and model[3] is acts[1]
    assert all(m.act_granularity == granularity for m in q.values())
    if act_mode != "auto":
        assert all(m.act_mode == act_mode for m in q.values())
    assert no_hooks_left(model)
    with torch.no_grad():
        for x in data:
            assert rel_err(model(x), ref(x)) < 3e-2


def test_shared_linear_is_replaced_everywhere(gen):
    """A module used under two names becomes one QuantLinear used under both."""
    lin = nn.Linear(17, 17)
    model = nn.Sequential(lin, nn.ReLU(), lin).eval()
    ref = copy.deepcopy(model)
    tq.quantize_model(model, "auto", calibration_data=[torch.randn(5, 17, generator=gen)],
                      progress=False)
    assert isinstance(model[0], QuantLinear) and model[2] is model[0]
    x = torch.randn(3, 17, generator=gen)
    assert rel_err(model(x), ref(x)) < 3e-2


def test_bare_linear_is_an_error():
    with pytest.raises(TypeError, match="quantize_: .*itself a linear layer.*from_float"):
        tq.quantize_model(nn.Linear(3, 2))


def test_skip_container_and_unused_pattern_warns():
    model = nn.Sequential(OrderedDict(a=nn.Sequential(nn.Linear(4, 4), nn.ReLU()),
                                      b=nn.Linear(4, 4)))
    with pytest.warns(UserWarning, match="'nomatch' matched no linear layer"):
        tq.quantize_model(model, skip=["a", "nomatch"], progress=False)
    assert type(model.a[0]) is nn.Linear and isinstance(model.b, QuantLinear)


def test_auto_keeps_symmetric_on_equal_errors():
    model = nn.Sequential(nn.Linear(5, 3))
    tq.quantize_model(model, "auto", "per_tensor", [torch.zeros(4, 5)], progress=False)
    assert model[0].act_mode == "symmetric"


def test_tied_output_embedding_warns():
    model = nn.Module()
    model.emb = nn.Embedding(10, 6)
    model.head = nn.Linear(6, 10, bias=False)
    model.head.weight = model.emb.weight
    with pytest.warns(UserWarning, match="'head' is tied to 'emb.weight'"):
        tq.quantize_model(model, progress=False)


def test_quantize_model_without_calibration_keeps_training_flag(gen):
    model = relu_mlp()
    model[2].train()  # mixed flags survive conversion layer by layer
    tq.quantize_model(model, progress=False)
    assert [m.training for m in model] == [False, False, True, False, False]


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_auto_relu_mlp(gen, granularity):
    """auto keeps, per layer, the mode whose output on the calibration inputs
    is closer to the float layer's; recomputed here on the inputs we capture
    ourselves: the int8 weight from torch's per-channel quantizer, activations
    quantized by the Python reference (torch's quantizer rounds x / scale
    before adding the zero point, which moves a few codes by one and the
    output error by ~1%), dequantized and multiplied in float."""
    model = relu_mlp()
    ref = copy.deepcopy(model)
    data = [centred(gen, 24), centred(gen, 9)]  # 33 rows: all kept for statistics
    tq.quantize_model(model, "auto", granularity, data, smoothing=None, progress=False)
    q = quantized(model)
    inputs = capture_inputs(ref, data, ["0", "2", "4"])
    for name, rows in inputs.items():
        layer = ref.get_submodule(name)
        w = layer.weight.detach()
        w_scale = (w.abs().amax(1) / 127.0).clamp(min=EPS)
        w_hat = torch_per_channel(w, w_scale, torch.zeros(w.shape[0], dtype=torch.int32),
                                  "symmetric", 0).float() * w_scale[:, None]
        y = rows @ w.t() + layer.bias.detach()
        mine = {}
        for mode in MODES:
            if granularity == "per_token":
                x_q, s, z = oracle.quantize_per_token(rows, mode)
            else:
                s, z = observer_qparams(rows, mode)
                x_q = oracle.quantize(rows, s, z, mode)
            x_hat = oracle.dequantize(x_q, s, z)
            y_hat = x_hat @ w_hat.t() + layer.bias.detach()
            mine[mode] = float((y_hat.double() - y.double()).pow(2).mean())
        theirs = q[name].stats["auto_output_mse"]
        for mode in MODES:
            assert theirs[mode] == pytest.approx(mine[mode], rel=1e-3), (name, mode)
        expected = "asymmetric" if theirs["asymmetric"] < theirs["symmetric"] else "symmetric"
        chosen = q[name].stats["auto_model_error"]["chosen"]
        assert q[name].act_mode == (expected if chosen == "per_layer" else chosen), (name, theirs)
    # after ReLU the inputs are one-sided: asymmetric, by a clear margin
    for name in ("2", "4"):
        err = q[name].stats["auto_output_mse"]
        assert q[name].act_mode == "asymmetric" and err["asymmetric"] < 0.8 * err["symmetric"], err
    # and the report carries the numbers
    reports = {r.name: r for r in tq.quantization_report(model)}
    assert reports["2"].auto_output_mse == q["2"].stats["auto_output_mse"]


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("factory", [relu_mlp, gelu_mlp], ids=["relu", "gelu"])
def test_auto_takes_the_mode_with_the_smaller_output_error(gen, factory, granularity):
    """For every layer: the chosen mode's output error is the smaller one, and
    it is the error of that fixed mode's layer on the same inputs."""
    data = [torch.randn(13, 17, generator=gen)]
    model = tq.quantize_model(factory(), "auto", granularity, data, smoothing=None, progress=False)
    fixed = {m: tq.quantize_model(factory(), m, granularity, data, smoothing=None, progress=False)
             for m in MODES}
    inputs = capture_inputs(factory(), data, list(quantized(model)))
    for name, q in quantized(model).items():
        err = q.stats["auto_output_mse"]
        assert set(err) == set(MODES) and all(v > 0 for v in err.values())
        chosen = q.stats["auto_model_error"]["chosen"]
        per_layer = min(MODES, key=lambda m: (err[m], m != "symmetric"))
        assert q.act_mode == (per_layer if chosen == "per_layer" else chosen), (name, err)
        y = factory().get_submodule(name)(inputs[name])
        for m in MODES:
            y_m = fixed[m].get_submodule(name)(inputs[name])
            assert err[m] == pytest.approx(float((y_m.double() - y.double()).pow(2).mean()),
                                           rel=1e-6), (name, m)
        assert tq.quantize_model(factory(), "symmetric", granularity, data,
                                 smoothing=None, progress=False).get_submodule(name).stats.get(
                                     "auto_output_mse") is None


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("factory", [relu_mlp, gelu_mlp], ids=["relu", "gelu"])
def test_auto_is_checked_against_the_fixed_modes_on_the_model_output(gen, factory, granularity):
    """auto records the model's output error on the first calibration batch
    with its per-layer choices and with each fixed mode, recomputed here from
    models converted in that fixed mode; it keeps the smallest (per-layer
    choices on a tie), and its model is then no worse than either fixed one."""
    data = [torch.randn(40, 17, generator=gen) * 2]
    float_model = factory().eval()
    auto = tq.quantize_model(copy.deepcopy(float_model), "auto", granularity, data,
                             smoothing=None, progress=False)
    reports = tq.quantization_report(auto)
    errors = reports[0].auto_model_error
    assert set(errors) == {"per_layer", *MODES, "chosen"}
    assert all(r.auto_model_error == errors for r in reports)
    with torch.no_grad():
        want = float_model(data[0]).double()

        def model_error(m):
            return float((m(data[0]).double() - want).pow(2).sum() / want.pow(2).sum())
        for m in MODES:
            fixed = tq.quantize_model(copy.deepcopy(float_model), m, granularity, data,
                                      smoothing=None, progress=False)
            assert errors[m] == pytest.approx(model_error(fixed), rel=1e-9), m
        assert model_error(auto) == pytest.approx(errors[errors["chosen"]], rel=1e-9)
        assert model_error(auto) <= min(errors[m] for m in MODES)
    best = min(errors[k] for k in ("per_layer", *MODES))
    assert errors[errors["chosen"]] == best
    if errors["per_layer"] == best:
        assert errors["chosen"] == "per_layer"
    else:
        assert all(r.act_mode == errors["chosen"] for r in reports)


# ---------------------------------------------------------------------------
# 4. skip


@pytest.mark.parametrize("skip,kept", [
    (None, set()),
    ("lm_head", {"lm_head"}),
    ("*.mlp.*", MLP_TINY),
    (["lm_head", "*.mlp.*"], MLP_TINY | {"lm_head"}),
    (("blocks.1.conv",), {"blocks.1.conv"}),
    ("blocks.?.attn", {"blocks.0.attn", "blocks.1.attn"}),
    (["*conv", "blocks.0.*"], {"blocks.0.attn", "blocks.0.mlp.fc", "blocks.0.mlp.proj",
                               "blocks.0.conv", "blocks.1.conv"}),
    ("nothing_matches", set()),
    ("head", set()),  # names match whole, not as substrings
    ("*", set(ALL_TINY)),
], ids=lambda v: repr(v) if not isinstance(v, set) else "")
def test_skip(gen, skip, kept):
    model = Tiny().eval()
    ref = copy.deepcopy(model)
    assert linear_names(model) == ALL_TINY
    originals = {n: model.get_submodule(n) for n in ALL_TINY}
    x = torch.randn(2, 7, 16, generator=gen)
    tq.quantize_model(model, "symmetric", "per_tensor", [x], skip=skip, progress=False)
    for name in ALL_TINY:
        m = model.get_submodule(name)
        if name in kept:
            assert m is originals[name], name
            assert type(m).__name__ == ("Linear" if "conv" not in name else "Conv1D")
        else:
            assert isinstance(m, QuantLinear), name
    assert sorted(quantized(model)) == sorted(set(ALL_TINY) - kept)
    with torch.no_grad():
        assert rel_err(model(x), ref(x)) < 3e-2


# ---------------------------------------------------------------------------
# 5. tiny random-init Hugging Face models (built from configs, no downloads)


def tiny_gpt2(seed=0):
    transformers = _transformers()
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return transformers.GPT2LMHeadModel(cfg).eval()


def tiny_llama(seed=0):
    transformers = _transformers()
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return transformers.LlamaForCausalLM(cfg).eval()


def token_batches(gen, vocab=64):
    ids = [torch.randint(0, vocab, (2, 9), generator=gen), torch.randint(0, vocab, (1, 17),
                                                                          generator=gen)]
    return [{"input_ids": i, "attention_mask": torch.ones_like(i)} for i in ids]


@pytest.mark.parametrize("act_mode,granularity", [("symmetric", "per_token"),
                                                  ("auto", "per_token"),
                                                  ("asymmetric", "per_tensor")])
@pytest.mark.parametrize("skip_head", [False, True], ids=["head", "skip_head"])
def test_gpt2(gen, skip_head, act_mode, granularity):
    model = tiny_gpt2()
    ref = copy.deepcopy(model)
    conv_names = [n for n, m in model.named_modules() if is_hf_conv1d(m)]
    assert len(conv_names) == 8  # c_attn, c_proj, c_fc, mlp.c_proj per layer
    assert isinstance(model.lm_head, nn.Linear)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied
    data = token_batches(gen)
    need = act_mode == "auto" or granularity == "per_tensor"
    with torch.no_grad():
        out = tq.quantize_model(model, act_mode, granularity, data if need else None,
                                skip="lm_head" if skip_head else None, progress=False)
    assert out is model
    assert not any(is_hf_conv1d(m) for m in model.modules())
    q = quantized(model)
    assert set(conv_names) <= set(q)
    if skip_head:
        assert type(model.lm_head) is nn.Linear
        assert model.lm_head.weight is model.transformer.wte.weight  # still tied
        assert len(q) == 8
    else:
        assert isinstance(model.lm_head, QuantLinear)
        assert (model.lm_head.in_features, model.lm_head.out_features) == (32, 64)
        assert len(q) == 9
    # the float embedding the head was tied to is untouched
    assert_same(model.transformer.wte.weight.detach(), ref.transformer.wte.weight.detach(), "wte")
    for b in data:
        with torch.no_grad():
            got, want = model(**b).logits, ref(**b).logits
        assert got.shape == want.shape
        assert rel_err(got, want) < 5e-2


@pytest.mark.parametrize("act_mode,granularity", [("symmetric", "per_token"),
                                                  ("auto", "per_tensor")])
@pytest.mark.parametrize("skip_head", [False, True], ids=["head", "skip_head"])
def test_llama(gen, skip_head, act_mode, granularity):
    model = tiny_llama()
    ref = copy.deepcopy(model)
    names = linear_names(model)
    assert len(names) == 15  # 7 per layer + lm_head
    data = token_batches(gen)
    need = act_mode == "auto" or granularity == "per_tensor"
    with torch.no_grad():
        tq.quantize_model(model, act_mode, granularity, data if need else None,
                          skip=["lm_head"] if skip_head else None, progress=False)
    q = quantized(model)
    expected = [n for n in names if not (skip_head and n == "lm_head")]
    assert sorted(q) == sorted(expected)
    assert (type(model.lm_head) is nn.Linear) == skip_head
    assert not any(type(m) is nn.Linear for n, m in model.named_modules() if n != "lm_head")
    for b in data:
        with torch.no_grad():
            got, want = model(**b).logits, ref(**b).logits
        assert rel_err(got, want) < 5e-2
