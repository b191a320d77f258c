"""The model-conversion API (docs/semantics.md, "Python API"): ``QuantLinear``, ``quantize_model``
(calibration, ``act_mode="auto"``, ``skip``), ``quantization_report`` /
``format_report``, and converted models under ``torch.compile`` and
``torch.inference_mode``.

Oracles that are not ours, wherever there is one:

* weight codes: ``torch.quantize_per_channel`` (with a scale recomputed here
  from ``max|w| / 127``);
* static activation qparams: ``torch.ao.quantization.MinMaxObserver`` (its
  affine and, with ``quant_min=-127``, its symmetric formula are those of docs/semantics.md
  §1), fed with layer inputs captured by forward pre-hooks of our own on a float
  copy of the model;
* fake quantization for the ``auto`` errors and the SQNRs: ``torch.quantize_per_tensor``
  / ``torch.quantize_per_channel`` followed by ``dequantize``;
* accuracy: the float layer / model itself.

Where the thing under test *is* a composition of our ops (the forward of
``QuantLinear``), it is compared bit for bit with the ops called directly.
"""

from __future__ import annotations

import copy
import math
import re
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization.observer import MinMaxObserver

import torch_quant as tq
from torch_quant import calibration
from torch_quant import reference as oracle
from torch_quant.nn import QuantLinear

from conftest import MODES, SUPPORTED_ISAS, assert_same, torch_per_channel, using_isa

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
GRANULARITIES = ("per_token", "per_tensor")
EPS = 2.0**-23


# ---------------------------------------------------------------------------
# helpers (independent of the library)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.detach().double(), expected.detach().double()
    return float((a - e).norm() / e.norm())


def observer_qparams(x: torch.Tensor, mode: str):
    """(scale, zero_point) of ``x``'s min/max by torch's MinMaxObserver:
    affine quint8 for asymmetric; symmetric qint8 over [-127, 127] (so that
    its step is max|x| / 127, as in docs/semantics.md ("Modes and rounding")) for symmetric."""
    if mode == "asymmetric":
        obs = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    else:
        obs = MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric,
                             quant_min=-127, quant_max=127)
    obs(x.detach().float())
    s, z = obs.calculate_qparams()
    return s.reshape(()).float(), z.reshape(()).to(torch.int32)


def torch_fake_quant_tensor(x: torch.Tensor, scale, zero_point, mode: str) -> torch.Tensor:
    dtype = torch.qint8 if mode == "symmetric" else torch.quint8
    return torch.quantize_per_tensor(x.float(), float(scale), int(zero_point), dtype).dequantize()


def torch_fake_quant_rows(rows: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-token (per row) quantize + dequantize with torch's per-channel
    quantizer over axis 0; the row qparams written out from docs/semantics.md ("Modes and rounding")."""
    rows = rows.float()
    if mode == "symmetric":
        scale = (rows.abs().amax(1) / 127.0).clamp(min=EPS)
        zp = torch.zeros(rows.shape[0], dtype=torch.long)
        dtype = torch.qint8
    else:
        lo = rows.amin(1).clamp(max=0.0)
        hi = rows.amax(1).clamp(min=0.0)
        scale = ((hi - lo) / 255.0).clamp(min=EPS)
        zp = (0 - torch.round(lo / scale)).clamp(0, 255).long()
        dtype = torch.quint8
    return torch.quantize_per_channel(rows, scale.double(), zp, 0, dtype).dequantize()


def run_batch(model: nn.Module, batch):
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def capture_inputs(model: nn.Module, batches, names):
    """{name: [K]-rows (float32, [rows, K]) of every input the named layers
    received while ``model`` ran over ``batches``}, via our own pre-hooks."""
    seen = {n: [] for n in names}
    handles = []
    for n in names:
        def hook(mod, args, n=n):
            x = args[0].detach()
            seen[n].append(x.reshape(-1, x.shape[-1]).float())
        handles.append(model.get_submodule(n).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for b in batches:
                run_batch(model, b)
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}


def linear_names(model: nn.Module):
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) or is_hf_conv1d(m)]


def is_hf_conv1d(m) -> bool:
    return type(m).__name__ == "Conv1D"


def relu_mlp(seed: int = 0) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Linear(17, 33), nn.ReLU(), nn.Linear(33, 7), nn.ReLU(), nn.Linear(7, 5))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m.eval()


def gelu_mlp(seed: int = 0) -> nn.Sequential:
    m = relu_mlp(seed)
    m[1], m[3] = nn.GELU(), nn.GELU()
    return m


def centred(gen, rows: int, half: int = 8) -> torch.Tensor:
    """[rows, 2 * half + 1] inputs that are exactly centred: each row holds z,
    -z and a 0, so min = -max per row and over any set of rows."""
    z = torch.randn(rows, half, generator=gen)
    return torch.cat([z, -z, torch.zeros(rows, 1)], dim=1)


def quantized(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def no_hooks_left(model) -> bool:
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def _transformers():
    return pytest.importorskip("transformers")


# ---------------------------------------------------------------------------
# 1. QuantLinear.from_float


def make_linear(gen, K, N, bias=True, std=1.0):
    lin = nn.Linear(K, N, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(N, K, generator=gen) * std)
        if bias:
            lin.bias.copy_(torch.randn(N, generator=gen))
    return lin


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("K", [1, 17])
def test_from_float_buffers(gen, K, bias, granularity):
    N = 7
    lin = make_linear(gen, K, N, bias)
    kw = {}
    if granularity == "per_tensor":
        kw = dict(input_scale=torch.tensor(0.0375), input_zero_point=torch.tensor(3))
    q = QuantLinear.from_float(lin, "asymmetric", granularity, **kw)

    assert (q.in_features, q.out_features) == (K, N)
    # held packed on CPU (tq.pack_weight), plain [N, K] through plain_weight()
    assert q.weight.dtype == torch.int8 and q.weight.shape == (N, (K + 3) // 4 + 2, 4)
    assert_same(q.weight, tq.pack_weight(q.plain_weight()), "packed weight")
    assert q.plain_weight().shape == (N, K)
    assert q.weight_scale.dtype == torch.float32 and q.weight_scale.shape == (N,)
    assert q.weight_sum.dtype == torch.int32 and q.weight_sum.shape == (N,)
    # scale from docs/semantics.md ("Modes and rounding"), written out: max|w| / 127 per output channel
    w = lin.weight.detach()
    assert_same(q.weight_scale, (w.abs().amax(1) / 127.0).clamp(min=EPS), "weight_scale")
    # codes: torch's own per-channel quantizer with that scale, zero point 0
    expected = torch_per_channel(w, q.weight_scale, torch.zeros(N, dtype=torch.int32),
                                 "symmetric", 0)
    assert_same(q.plain_weight(), expected, "weight codes")
    assert int(q.plain_weight().abs().max()) == 127  # every row reaches max|code|
    assert_same(q.weight_sum, q.plain_weight().sum(1).to(torch.int32), "weight_sum")
    if bias:
        assert q.bias.dtype == torch.float32 and q.bias.shape == (N,)
        assert_same(q.bias, lin.bias.detach(), "bias")
    else:
        assert q.bias is None
    keys = set(q.state_dict())
    base = {"weight", "weight_scale", "weight_sum"} | ({"bias"} if bias else set())
    if granularity == "per_tensor":
        assert q.input_scale.shape == () and q.input_scale.dtype == torch.float32
        assert q.input_zero_point.shape == () and q.input_zero_point.dtype == torch.int32
        assert float(q.input_scale) == pytest.approx(0.0375) and int(q.input_zero_point) == 3
        assert keys == base | {"input_scale", "input_zero_point"}
    else:
        assert keys == base
    assert not any(b.requires_grad for b in q.buffers())
    # the float layer is left alone
    assert_same(lin.weight.detach(), w, "float weight untouched")


def test_from_float_half_linear(gen):
    lin = make_linear(gen, 17, 9).half()
    q = QuantLinear.from_float(lin)
    assert q.bias.dtype == torch.float32
    assert_same(q.bias, lin.bias.detach().float(), "bias to float32")
    x = torch.randn(5, 17, generator=gen).half()
    y = q(x)
    assert y.dtype == torch.float16
    assert rel_err(y, lin.float()(x.float())) < 2e-2


LEADS = [(), (1,), (7,), (0,), (2, 3), (3, 0), (2, 1, 5)]


@pytest.mark.parametrize("lead", LEADS, ids=lambda s: "x".join(map(str, s)) or "1d")
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("act_mode", MODES)
def test_per_token_forward_is_the_fused_op(gen, act_mode, dtype, lead):
    K, N = 17, 9
    lin = make_linear(gen, K, N)
    q = QuantLinear.from_float(lin, act_mode)
    x = torch.randn(*lead, K, generator=gen).to(dtype)
    y = q(x)
    # the layer (packed weight) against the op on the plain weight
    expected = tq.dynamic_quantized_linear(x, q.plain_weight(), q.weight_scale, q.bias,
                                           q.weight_sum, act_mode)
    assert y.dtype == dtype and y.shape == (*lead, N)
    assert_same(y, expected, f"{act_mode} {dtype} {lead}")


@pytest.mark.parametrize("lead", LEADS, ids=lambda s: "x".join(map(str, s)) or "1d")
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("act_mode", MODES)
def test_per_tensor_forward_is_quantize_then_linear(gen, act_mode, dtype, lead):
    K, N = 17, 9
    lin = make_linear(gen, K, N)
    calib = torch.randn(11, K, generator=gen)
    s, z = observer_qparams(calib, act_mode)
    q = QuantLinear.from_float(lin, act_mode, "per_tensor", s, z)
    x = torch.randn(*lead, K, generator=gen).to(dtype)
    y = q(x)
    assert_same(q.input_scale, s, "input_scale")
    assert_same(q.input_zero_point, z, "input_zero_point")
    x_q = tq.quantize(x, q.input_scale, q.input_zero_point, act_mode)
    expected = tq.quantized_linear(x_q, q.input_scale, q.input_zero_point, q.plain_weight(),
                                   q.weight_scale, q.bias, q.weight_sum, out_dtype=dtype)
    assert y.dtype == dtype and y.shape == (*lead, N)
    assert_same(y, expected, f"{act_mode} {dtype} {lead}")


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("act_mode", MODES)
@pytest.mark.parametrize("K,bias", [(1, True), (17, False), (17, True), (129, True)])
def test_forward_close_to_float(gen, K, bias, act_mode, granularity):
    N = 7
    lin = make_linear(gen, K, N, bias)
    x = torch.randn(3, 5, K, generator=gen)  # 3-D input
    kw = {}
    if granularity == "per_tensor":
        s, z = observer_qparams(x, act_mode)
        kw = dict(input_scale=s, input_zero_point=z)
    q = QuantLinear.from_float(lin, act_mode, granularity, **kw)
    with torch.no_grad():
        ref = lin(x)
    for dtype in FLOATS:
        y = q(x.to(dtype))
        assert y.dtype == dtype
        tol = 2e-2 if dtype != torch.bfloat16 else 3e-2  # bf16 output rounding alone: 2^-9
        assert rel_err(y, ref) < tol, (dtype, rel_err(y, ref))


def test_extra_repr():
    lin = nn.Linear(17, 9)
    q = QuantLinear.from_float(lin, "asymmetric", "per_tensor", torch.tensor(0.1), torch.tensor(7))
    text = repr(q)
    assert "act_mode=asymmetric" in text and "act_granularity=per_tensor" in text
    assert "in_features=17" in text and "out_features=9" in text
    q = QuantLinear.from_float(lin)
    assert "act_mode=symmetric" in repr(q) and "act_granularity=per_token" in repr(q)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.int32, torch.int8, torch.uint8, torch.bool],
                         ids=str)
def test_non_float_input_raises_type_error(dtype, granularity):
    q = QuantLinear.from_float(nn.Linear(5, 3), "symmetric", granularity,
                               torch.tensor(0.1), torch.tensor(0))
    with pytest.raises(TypeError, match=r"QuantLinear.*" + str(dtype).replace(".", r"\.")):
        q(torch.ones(2, 5).to(dtype))


def test_from_float_bad_settings():
    lin = nn.Linear(5, 3)
    with pytest.raises(ValueError, match=r"QuantLinear.*act_mode.*'int4'"):
        QuantLinear.from_float(lin, act_mode="int4")
    with pytest.raises(ValueError, match=r"QuantLinear.*act_granularity.*'per_row'"):
        QuantLinear.from_float(lin, act_granularity="per_row")
    with pytest.raises(ValueError, match=r"QuantLinear.*act_mode"):
        QuantLinear.from_float(lin, act_mode="auto")  # only quantize_model knows "auto"
    with pytest.raises(ValueError, match=r"QuantLinear.*act_mode.*None"):
        QuantLinear(5, 3, act_mode=None)
    with pytest.raises(ValueError, match=r"from_float.*input_scale"):
        QuantLinear.from_float(lin, "symmetric", "per_tensor")
    with pytest.raises(ValueError, match=r"from_float.*input_zero_point"):
        QuantLinear.from_float(lin, "symmetric", "per_tensor", input_scale=torch.tensor(0.1))


def test_from_float_bad_module_or_weight():
    with pytest.raises(TypeError, match=r"from_float.*Conv2d"):
        QuantLinear.from_float(nn.Conv2d(3, 3, 1))
    lin = nn.Linear(5, 3)
    with torch.no_grad():
        lin.weight[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"from_float.*NaN"):
        QuantLinear.from_float(lin)


# ---------------------------------------------------------------------------
# 2. Hugging Face Conv1D (weight stored [in, out])


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_conv1d_from_float(gen, granularity):
    Conv1D = _transformers().pytorch_utils.Conv1D
    nx, nf = 17, 9
    conv = Conv1D(nf, nx)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(nx, nf, generator=gen))
        conv.bias.copy_(torch.randn(nf, generator=gen))
    x = torch.randn(2, 7, nx, generator=gen)
    kw = {}
    if granularity == "per_tensor":
        s, z = observer_qparams(x, "asymmetric")
        kw = dict(input_scale=s, input_zero_point=z)
    q = QuantLinear.from_float(conv, "asymmetric", granularity, **kw)
    assert (q.in_features, q.out_features) == (nx, nf)
    assert q.plain_weight().shape == (nf, nx)
    w = conv.weight.detach().t()
    deq = q.dequantized_weight()
    assert deq.shape == w.shape
    # round to nearest: each weight within half a step of its row's scale
    assert ((deq - w).abs() <= q.weight_scale[:, None] * (0.5 + 1e-5)).all()
    assert_same(q.plain_weight(),
                torch_per_channel(w, q.weight_scale, torch.zeros(nf, dtype=torch.int32),
                                  "symmetric", 0), "codes of the transposed weight")
    assert_same(q.bias, conv.bias.detach(), "bias")
    with torch.no_grad():
        ref = conv(x)
    y = q(x)
    assert y.shape == ref.shape
    assert rel_err(y, ref) < 2e-2


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


@pytest.mark.parametrize("act_mode", [*MODES, "auto"])
def test_per_tensor_calibration_is_exact_min_max(gen, act_mode):
    """Over all batches, not a sample: 3008 rows (far more than the 256 kept
    for statistics), batch shapes [1, K], [7, K], [2, 1500, K], with the
    extremes near the end of the last one."""
    model = relu_mlp()
    ref = copy.deepcopy(model)
    last = torch.randn(2, 1500, 17, generator=gen)
    last[1, 1499, 3] = 9.5
    last[1, 1498, 11] = -7.25
    data = [torch.randn(1, 17, generator=gen), torch.randn(7, 17, generator=gen), last]
    tq.quantize_model(model, act_mode, "per_tensor", data, smoothing=None, progress=False)
    inputs = capture_inputs(ref, data, ["0", "2", "4"])
    assert float(inputs["0"].max()) == 9.5 and float(inputs["0"].min()) == -7.25
    for name, rows in inputs.items():
        q = model.get_submodule(name)
        lo, hi = float(rows.min()), float(rows.max())
        assert q.stats["calibrated_range"] == (lo, hi), name
        assert q.stats["calibration_rows"] == 3008
        s, z = observer_qparams(rows, q.act_mode)
        assert_same(q.input_scale, s, f"{name} input_scale vs MinMaxObserver")
        assert_same(q.input_zero_point, z, f"{name} input_zero_point vs MinMaxObserver")
        s2, z2 = tq.choose_qparams(torch.tensor([lo, hi]), q.act_mode)
        assert_same(q.input_scale, s2, f"{name} input_scale vs choose_qparams")
        assert_same(q.input_zero_point, z2, f"{name} input_zero_point vs choose_qparams")
    if act_mode == "symmetric":
        assert float(model[0].input_scale) == pytest.approx(9.5 / 127, rel=1e-7)


@pytest.mark.parametrize("act_mode", MODES)
def test_percentile_clips_outliers(gen, act_mode):
    x = torch.randn(200, 17, generator=gen)
    x[13, 4] = 40.0
    x[100, 2] = -25.0
    minmax = tq.quantize_model(relu_mlp(), act_mode, "per_tensor", [x], smoothing=None, progress=False)
    clipped = tq.quantize_model(relu_mlp(), act_mode, "per_tensor", [x], percentile=99.0,
                                smoothing=None, progress=False)
    full = tq.quantize_model(relu_mlp(), act_mode, "per_tensor", [x], percentile=100.0,
                             smoothing=None, progress=False)
    assert minmax[0].stats["calibrated_range"] == (-25.0, 40.0)
    lo, hi = clipped[0].stats["calibrated_range"]
    # all 200 rows are kept, so these are torch.quantile of everything the layer saw
    p_lo, p_hi = torch.quantile(x.flatten(), torch.tensor([0.01, 0.99])).tolist()
    assert lo == pytest.approx(p_lo, rel=1e-6) and hi == pytest.approx(p_hi, rel=1e-6)
    assert -25.0 < lo < 0 < hi < 40.0 and hi < 4.0
    assert float(clipped[0].input_scale) < float(minmax[0].input_scale) / 5
    s, z = observer_qparams(torch.tensor([lo, hi]), act_mode)
    assert_same(clipped[0].input_scale, s, "scale of the clipped range")
    assert_same(clipped[0].input_zero_point, z, "zero point of the clipped range")
    for name in ("0", "2", "4"):
        a, b = full.get_submodule(name), minmax.get_submodule(name)
        assert_same(a.input_scale, b.input_scale, f"{name}: percentile=100 is min-max")
        assert_same(a.input_zero_point, b.input_zero_point, f"{name}: percentile=100 is min-max")
    # the clipped layer is the more accurate one on the bulk of the data
    bulk = x[(x.abs() < 4).all(1)]
    ref = relu_mlp()
    with torch.no_grad():
        e_clip = rel_err(clipped[0](bulk), ref[0](bulk))
        e_minmax = rel_err(minmax[0](bulk), ref[0](bulk))
    assert e_clip < e_minmax


def test_percentile_errors(gen):
    data = [torch.randn(5, 17, generator=gen)]
    with pytest.raises(ValueError, match=r"(QuantConfig|quantize_).*percentile.*per_tensor"):
        tq.quantize_model(relu_mlp(), "symmetric", "per_token", data, percentile=99.0,
                          progress=False)
    for bad in (50.0, 100.5, -1, "99"):  # "99": a TypeError
        with pytest.raises((ValueError, TypeError), match=r"(QuantConfig|quantize_).*percentile"):
            tq.quantize_model(relu_mlp(), "symmetric", "per_tensor", data, percentile=bad,
                              progress=False)


@pytest.mark.parametrize("act_mode,granularity,needs", [
    ("auto", "per_token", "act_mode='auto'"),
    ("symmetric", "per_tensor", "act_granularity='per_tensor'"),
    ("asymmetric", "per_tensor", "act_granularity='per_tensor'"),
    ("auto", "per_tensor", "act_mode='auto' and act_granularity='per_tensor'"),
])
def test_calibration_data_required(act_mode, granularity, needs):
    model = relu_mlp()
    with pytest.raises(ValueError, match=r"(QuantConfig|quantize_).*" + re.escape(needs)
                       + r".*calibration_data"):
        tq.quantize_model(model, act_mode, granularity)
    assert not quantized(model)


def test_bad_arguments(gen):
    model = relu_mlp()
    with pytest.raises(ValueError, match=r"(QuantConfig|quantize_).*act_mode.*'int8'"):
        tq.quantize_model(model, act_mode="int8")
    with pytest.raises(ValueError, match=r"(QuantConfig|quantize_).*act_granularity.*'per_channel'"):
        tq.quantize_model(model, act_granularity="per_channel")
    with pytest.raises(TypeError, match=r"(QuantConfig|quantize_).*model.*dict"):
        tq.quantize_model({"a": nn.Linear(2, 2)})
    with pytest.raises(TypeError, match=r"(QuantConfig|quantize_).*skip"):
        tq.quantize_model(model, skip=["0", 2])
    with pytest.raises(TypeError, match=r"QuantConfig: skip must be .*got int"):
        tq.quantize_model(model, skip=5)
    assert not quantized(model)


class Block3(nn.Module):
    def __init__(self, k=12):
        super().__init__()
        self.block = nn.Module()
        self.block.fc1 = nn.Linear(k, k)
        self.block.fc2 = nn.Linear(k, k)
        self.block.fc3 = nn.Linear(k, k)

    def forward(self, x):
        b = self.block
        return b.fc3(torch.relu(b.fc2(torch.relu(b.fc1(x)))))


def _unconvertible(kind):
    m = Block3()
    with torch.no_grad():
        if kind == "nan_weight":
            m.block.fc2.weight[3, 4] = float("nan")
        elif kind == "inf_bias":
            m.block.fc2.bias[0] = float("inf")
        elif kind == "float64":
            m.block.fc2.double()
        elif kind == "wide":
            m.block.fc2 = nn.Linear(65_800, 12)
        elif kind == "meta":
            m.block.fc2.to("meta")
    return m


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("kind,message", [
    ("nan_weight", "weight of layer 'block.fc2' holds NaN"),
    ("inf_bias", "bias of layer 'block.fc2' holds NaN or inf"),
    ("float64", "layer 'block.fc2' is torch.float64"),
    ("wide", "layer 'block.fc2' has 65800 input features"),
    ("meta", "layer 'block.fc2' has its weights on the meta device"),
])
def test_unconvertible_layer_leaves_the_model_as_it_was(gen, kind, message, granularity):
    """Every layer is checked before the model is touched: the error names
    the layer, and no layer is replaced or changed (calibration, smoothing's
    folds and the swap all come after)."""
    model = _unconvertible(kind)
    before = {k: v.clone() for k, v in model.state_dict().items() if v.device.type != "meta"}
    data = [torch.randn(8, 12, generator=gen)] if granularity == "per_tensor" else None
    with pytest.raises(ValueError, match=re.escape(message)):
        tq.quantize_model(model, "symmetric", granularity, data, progress=False)
    assert not quantized(model)
    assert all(type(m) is nn.Linear for m in (model.block.fc1, model.block.fc2, model.block.fc3))
    after = {k: v for k, v in model.state_dict().items() if v.device.type != "meta"}
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]) or (v.isnan() == after[k].isnan()).all(), k
    # skipping the layer converts the rest (per token: no calibration pass through it)
    if kind != "wide" and granularity == "per_token":
        tq.quantize_model(model, "symmetric", granularity, data, skip="block.fc2", progress=False)
        assert sorted(quantized(model)) == ["block.fc1", "block.fc3"]


class TwoInputs(nn.Module):
    """``forward(x, y=None)``: calibration batches as tuples, lists or dicts."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc1 = nn.Linear(17, 9)
        self.fc2 = nn.Linear(9, 5)
        self.fc3 = nn.Linear(3, 5, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x, y=None):
        out = self.fc2(F.relu(self.fc1(x)))
        if y is not None:
            out = out + self.fc3(y)
        return out


@pytest.mark.parametrize("act_mode", ["asymmetric", "auto"])
def test_calibration_batch_forms(gen, act_mode):
    xs = [torch.randn(7, 17, generator=gen), torch.randn(1, 17, generator=gen)]
    ys = [torch.randn(7, 3, generator=gen) * 3, torch.randn(1, 3, generator=gen)]
    forms = {
        "tuple": [(x, y) for x, y in zip(xs, ys)],
        "list": [[x, y] for x, y in zip(xs, ys)],
        "dict": [{"x": x, "y": y} for x, y in zip(xs, ys)],
        "dict_kw_only_y": [{"y": y, "x": x} for x, y in zip(xs, ys)],
        "generator": None,
    }
    ref = TwoInputs()
    inputs = capture_inputs(ref, forms["tuple"], ["fc1", "fc2", "fc3"])
    for form, data in forms.items():
        if data is None:
            data = ((x, y) for x, y in zip(xs, ys))  # no len()
        model = tq.quantize_model(TwoInputs(), act_mode, "per_tensor", data, smoothing=None, progress=False)
        q = quantized(model)
        assert sorted(q) == ["fc1", "fc2", "fc3"], form
        for name, rows in inputs.items():
            s, z = observer_qparams(rows, q[name].act_mode)
            assert_same(q[name].input_scale, s, f"{form} {name}")
            assert_same(q[name].input_zero_point, z, f"{form} {name}")
        with torch.no_grad():
            assert rel_err(model(xs[0], ys[0]), ref(xs[0], ys[0])) < 3e-2


def test_calibration_sample_represents_late_batches(gen):
    """The rows kept for statistics are a uniform sample of every row seen,
    not the first ones: 40 batches of 64 rows, each row tagged with its
    batch; the 256 kept rows come about evenly from the first and second
    half (expected 128 each; binomial sd 8)."""
    layer = nn.Linear(3, 2)
    obs = calibration.Observer("x", torch.Generator().manual_seed(0))
    for b in range(40):
        obs(layer, (torch.full((64, 3), float(b)) + torch.rand(64, 3, generator=gen) * 0.1,))
    batch = obs.rows[:, 0].floor()
    assert obs.rows.shape[0] == calibration.SAMPLE_ROWS and obs.seen == 40 * 64
    late = int((batch >= 20).sum())
    assert 96 <= late <= 160, late
    assert int((batch == 39).sum()) > 0  # the very last batch is represented


def test_calibration_tensor_batches(gen):
    data = [torch.randn(7, 17, generator=gen), torch.randn(3, 2, 17, generator=gen)]
    # a bare tensor batch: model(x); fc3 is then never called, which is an error
    # (its range would be unknown), naming the layer
    m = TwoInputs()
    with pytest.raises(ValueError, match=r"quantize_.*never reached.*fc3"):
        tq.quantize_model(m, "symmetric", "per_tensor", data, smoothing=None, progress=False)
    assert not quantized(m) and no_hooks_left(m)
    # and with only the x path, tensor batches calibrate it
    mlp = relu_mlp()
    inputs = capture_inputs(copy.deepcopy(mlp), data, ["0"])
    tq.quantize_model(mlp, "symmetric", "per_tensor", data, smoothing=None, progress=False)
    s, z = observer_qparams(inputs["0"], "symmetric")
    assert_same(mlp[0].input_scale, s, "tensor batches")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_calibration_data_names_the_layer(gen, bad):
    x = torch.randn(4, 17, generator=gen)
    y = torch.randn(4, 3, generator=gen)
    y[2, 1] = bad
    model = TwoInputs()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"quantize_.*'fc3'.*NaN or inf"):
        tq.quantize_model(model, "symmetric", "per_tensor", [{"x": x, "y": y}], progress=False)
    # nothing converted, no hooks left behind, weights untouched
    assert not quantized(model) and no_hooks_left(model)
    for k, v in model.state_dict().items():
        assert_same(v, before[k], k)
    x[0, 0] = bad
    with pytest.raises(ValueError, match=r"'fc1'"):
        tq.quantize_model(model, "auto", "per_token", [(x, None)], progress=False)
    assert not quantized(model) and no_hooks_left(model)


# ---------------------------------------------------------------------------
# 4. skip


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        Conv1D = _transformers().pytorch_utils.Conv1D
        self.attn = nn.Linear(16, 16)
        self.mlp = nn.Sequential(OrderedDict(fc=nn.Linear(16, 33), act=nn.GELU(),
                                             proj=nn.Linear(33, 16)))
        self.conv = Conv1D(16, 16)

    def forward(self, x):
        return x + self.conv(self.mlp(self.attn(x)))


class Tiny(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.lm_head = nn.Linear(16, 11, bias=False)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.lm_head(x)


ALL_TINY = ["blocks.0.attn", "blocks.0.mlp.fc", "blocks.0.mlp.proj", "blocks.0.conv",
            "blocks.1.attn", "blocks.1.mlp.fc", "blocks.1.mlp.proj", "blocks.1.conv", "lm_head"]
MLP_TINY = {"blocks.0.mlp.fc", "blocks.0.mlp.proj", "blocks.1.mlp.fc", "blocks.1.mlp.proj"}


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


# ---------------------------------------------------------------------------
# 6. quantization_report / format_report


def report_model():
    model = nn.Sequential(OrderedDict(proj=nn.Linear(2, 1)))
    with torch.no_grad():
        model.proj.weight.copy_(torch.tensor([[0.5, -0.3]]))
        model.proj.bias.fill_(0.25)
    return model


def row_of(table: str, name: str):
    rows = [line.split() for line in table.splitlines() if line.split()[:1] == [name]]
    assert len(rows) == 1, table
    return rows[0]


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_report_hand_computed(granularity):
    model = report_model()
    x = torch.tensor([[-3.0, 5.0]])
    w = model.proj.weight.detach().clone()
    tq.quantize_model(model, "symmetric", granularity, [x], smoothing=None, progress=False)
    (r,) = tq.quantization_report(model)
    assert isinstance(r, tq.LayerReport)
    assert (r.name, r.act_mode, r.act_granularity) == ("proj", "symmetric", granularity)
    assert (r.in_features, r.out_features) == (2, 1)
    # [-3, 5] symmetric: scale 5/127, the data spans -76.2 .. 127 codes of 255
    assert abs(r.act_range_utilization - 203.2 / 255) < 1e-6
    # float32 weight [1, 2] + bias [1]
    assert r.weight_bytes_before == 4 * (2 + 1)
    # docs/semantics.md ("Python API") buffers: int8 weight [N, K], float32 scale [N], int32 sum [N],
    # float32 bias [N], + 0-dim float32 input_scale and int32 zero point
    N, K = 1, 2
    expected_after = N * K + 4 * N + 4 * N + 4 * N + (8 if granularity == "per_tensor" else 0)
    assert r.weight_bytes_after == expected_after
    # as stored: the state_dict's bytes (the weight plain, as in files)
    assert r.weight_bytes_after == sum(b.numel() * b.element_size()
                                       for b in model.proj.state_dict().values())
    # SQNRs from torch's own quantizers
    x_hat = torch_fake_quant_tensor(x, torch.tensor(5.0) / 127, 0, "symmetric")
    act_sqnr = 10 * math.log10(float(x.double().pow(2).sum())
                               / float((x.double() - x_hat.double()).pow(2).sum()))
    assert r.act_sqnr_db == pytest.approx(act_sqnr, rel=1e-9)
    w_scale = (w.abs().amax(1) / 127).double()
    w_hat = torch.quantize_per_channel(w, w_scale, torch.zeros(1, dtype=torch.long), 0,
                                       torch.qint8).dequantize()
    w_sqnr = 10 * math.log10(float(w.double().pow(2).sum())
                             / float((w.double() - w_hat.double()).pow(2).sum()))
    assert r.weight_sqnr_db == pytest.approx(w_sqnr, rel=1e-9)
    # and by hand: -3 -> code -76 (-76.2 rounded), 5 -> 127; -0.3 -> -76, 0.5 -> 127
    assert act_sqnr == pytest.approx(10 * math.log10(34 / (3 - 76 * 5 / 127) ** 2), rel=1e-5)
    assert w_sqnr == pytest.approx(10 * math.log10(0.34 / (0.3 - 76 * 0.5 / 127) ** 2), rel=1e-5)
    d = r.to_dict()
    assert d["name"] == "proj" and d["act_range_utilization"] == r.act_range_utilization

    table = tq.format_report([r])
    assert "proj" in table and "79.7%" in table
    cells = row_of(table, "proj")
    assert cells[:4] == ["proj", "symmetric", granularity, "2x1"]
    assert cells[4] == "12" and cells[5] == str(expected_after)
    assert cells[6] == f"{12 / expected_after:.2f}"
    assert cells[7] == "79.7%"
    assert cells[8] == f"{w_sqnr:.1f}" and cells[9] == f"{act_sqnr:.1f}"
    assert "total (1 layers)" in table


def test_report_without_calibration():
    model = report_model()
    tq.quantize_model(model, "asymmetric", "per_token", progress=False)
    (r,) = tq.quantization_report(model)
    assert r.act_range_utilization is None and r.act_sqnr_db is None
    assert r.weight_sqnr_db is not None and r.weight_bytes_before == 12
    cells = row_of(tq.format_report([r]), "proj")
    assert cells[7] == "-" and cells[9] == "-"
    assert cells[8] != "-"


def test_report_many_layers_and_conv1d(gen):
    model = Tiny().eval()
    x = torch.randn(3, 16, generator=gen)
    tq.quantize_model(model, "auto", "per_token", [x], skip="*.mlp.*", progress=False)
    reports = tq.quantization_report(model)
    assert [r.name for r in reports] == [n for n in ALL_TINY if n not in MLP_TINY]
    ref = Tiny()
    for r in reports:
        layer = ref.get_submodule(r.name)
        params = [p for p in (layer.weight, layer.bias) if p is not None]
        assert r.weight_bytes_before == sum(p.numel() * 4 for p in params)
        assert r.weight_bytes_after == sum(b.numel() * b.element_size()
                                           for b in model.get_submodule(r.name).state_dict().values())
        assert r.act_mode in MODES and 0 < r.act_range_utilization <= 1
    table = tq.format_report(reports)
    for r in reports:
        assert r.name in table
    assert f"total ({len(reports)} layers)" in table
    assert tq.quantization_report(relu_mlp()) == []


# ---------------------------------------------------------------------------
# 7. torch.compile


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_compile_fullgraph_matches_eager(gen, granularity):
    x = centred(gen, 10)
    # the first layer symmetric, the others asymmetric (a second call converts what is left)
    model = tq.quantize_model(relu_mlp(), "symmetric", granularity, [x], skip=["2", "4"],
                              smoothing=None, progress=False)
    model = tq.quantize_model(model, "asymmetric", granularity, [x], smoothing=None, progress=False)
    modes = {m.act_mode for m in quantized(model).values()}
    assert modes == set(MODES)  # both kernels in one graph
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True)
        for inp in (x, torch.randn(3, 7, 17, generator=gen)):
            torch.testing.assert_close(compiled(inp), model(inp), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------
# 8. inference mode


def test_from_float_under_inference_mode_makes_normal_tensors(gen):
    lin = make_linear(gen, 17, 9)
    with torch.inference_mode():
        q = QuantLinear.from_float(lin, "asymmetric", "per_tensor", torch.tensor(0.05),
                                   torch.tensor(120))
        model = tq.quantize_model(relu_mlp(), progress=False)
    for name, b in [*q.named_buffers(), *model.named_buffers()]:
        assert not b.is_inference(), name
    assert not q.weight.is_inference()


def test_from_float_checks_the_parameters_it_is_given():
    """Static parameters are checked where the layer is made, as load_state_dict
    checks them (a symmetric layer's zero point is 0)."""
    lin = nn.Linear(8, 4)
    with pytest.raises(ValueError, match="from_float: input_scale must be finite and > 0"):
        QuantLinear.from_float(lin, "symmetric", "per_tensor", input_scale=torch.tensor(0.0),
                               input_zero_point=torch.tensor(0))
    with pytest.raises(ValueError, match=r"from_float: input_zero_point must be in \[0, 0\]"):
        QuantLinear.from_float(lin, "symmetric", "per_tensor", input_scale=torch.tensor(0.1),
                               input_zero_point=torch.tensor(3))
