"""QuantLinear as nn.Linear's conventions have it: a logical [out, in] int8
weight Parameter (frozen) held once, the bias a Parameter, parameter counts,
summaries, Hugging Face's tie_weights() and num_parameters(), the constructor's
keyword arguments, copies and pickles."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from torch import nn

import torch_quant as tq
from torch_quant.nn import PackedWeight

from conftest import assert_same
from model_helpers import tiny_llama


def test_weight_is_the_logical_int8_parameter_held_once(gen):
    lin = nn.Linear(37, 21)
    q = tq.QuantLinear.from_float(lin)
    out_f, in_f = q.weight.shape  # as nn.Linear's
    assert (out_f, in_f) == (21, 37) and q.weight.dtype == torch.int8
    assert isinstance(q.weight, nn.Parameter) and not q.weight.requires_grad
    assert isinstance(q.bias, nn.Parameter) and q.bias.dtype == torch.float32
    assert [n for n, _ in q.named_parameters()] == ["weight", "bias"]
    assert [n for n, _ in q.named_buffers()] == ["weight_scale", "weight_sum"]
    # what state_dict holds is what the parameters and buffers say, shape for shape
    sd = q.state_dict()
    held = dict([*q.named_parameters(), *q.named_buffers()])
    assert list(sd) == list(held)
    assert all(sd[k].shape == held[k].shape and sd[k].dtype == held[k].dtype for k in sd)
    # the packed tensor is the only copy of the codes (the wrapper has no storage)
    assert q.weight.packed.numel() == 21 * ((37 + 3) // 4 + 2) * 4
    with pytest.raises(RuntimeError):
        q.weight.untyped_storage().data_ptr()
    # read like a tensor: through a plain copy made for the call
    assert_same(q.weight.float(), q.plain_weight().float(), "float()")
    assert_same(q.weight[3], q.plain_weight()[3], "a row")
    assert torch.equal(q.weight, q.plain_weight())
    assert "PackedWeight(shape=(21, 37), dtype=torch.int8" in repr(q.weight)


def test_writing_the_packed_weight_in_place_is_refused_and_assignment_quantizes(gen):
    lin = nn.Linear(16, 8)
    q = tq.QuantLinear.from_float(lin)
    for write in (lambda w: w.add_(1), lambda w: w.zero_(),
                  lambda w: w.copy_(torch.zeros(8, 16, dtype=torch.int8))):
        with torch.no_grad(), pytest.raises(RuntimeError, match="not written in place"):
            write(q.weight)
    # a float weight is quantized as from_float does it
    other = nn.Linear(16, 8)
    q.weight = other.weight
    want = tq.QuantLinear.from_float(other)
    assert_same(q.plain_weight(), want.plain_weight(), "codes")
    assert_same(q.weight_scale, want.weight_scale, "scales")
    assert_same(q.weight_sum, want.weight_sum, "sums")
    assert isinstance(q.weight, PackedWeight)
    # int8 codes replace the codes; the sums follow, the scales stay
    codes = torch.randint(-128, 128, (8, 16), generator=gen, dtype=torch.int8)
    q.weight = codes
    assert_same(q.plain_weight(), codes, "codes")
    assert_same(q.weight_sum, codes.sum(1, dtype=torch.int32), "sums")
    assert_same(q.weight_scale, want.weight_scale, "scales kept")
    q.check_state({}, "test")
    with pytest.raises(ValueError, match=r"QuantLinear: weight must have shape \(8, 16\)"):
        q.weight = torch.zeros(16, 8)
    with pytest.raises(TypeError, match="QuantLinear: weight must be a float or int8 tensor"):
        q.weight = torch.zeros(8, 16, dtype=torch.int32)


def test_constructor_takes_keywords_device_and_dtype_like_nn_linear():
    q = tq.QuantLinear(8, 4, bias=False, act_mode="asymmetric", act_granularity="per_tensor",
                       device="meta", dtype=torch.bfloat16)
    assert q.weight.is_meta and q.weight.shape == (4, 8) and q.weight.dtype == torch.int8
    assert q.weight_scale.dtype == torch.float32 and q.bias is None
    with pytest.raises(TypeError):
        tq.QuantLinear(8, 4, True, "asymmetric")  # settings are keyword-only
    with pytest.raises(TypeError, match="QuantLinear: dtype must be a float dtype"):
        tq.QuantLinear(8, 4, dtype=torch.int8)
    # under a float16 default dtype, as Hugging Face builds models
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        q = tq.QuantLinear(8, 4)
    finally:
        torch.set_default_dtype(default)
    assert q.bias.dtype == torch.float32 and q.weight_scale.dtype == torch.float32


def test_parameter_counts_and_summaries_match_the_float_model():
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5, bias=False))
    counts = [p.numel() for p in model.parameters()]
    tq.quantize_model(model, progress=False)
    assert [p.numel() for p in model.parameters()] == counts
    assert [p.shape for p in model.parameters()] == [(30, 20), (30,), (5, 30)]
    text = repr(model)
    assert "QuantLinear(in_features=20, out_features=30, bias=True" in text


def test_copies_pickles_and_moves_keep_one_packed_weight(gen):
    q = tq.QuantLinear.from_float(nn.Linear(24, 10))
    x = torch.randn(3, 24, generator=gen)
    want = q(x)
    buf = io.BytesIO()
    torch.save(q, buf)
    buf.seek(0)
    for other in (copy.deepcopy(q), torch.load(buf, weights_only=False), q.to("cpu"),
                  q.half(), q.share_memory()):
        assert isinstance(other.weight, PackedWeight) and isinstance(other.weight, nn.Parameter)
        assert_same(other(x), want, type(other).__name__)
    assert copy.deepcopy(q).weight.packed.data_ptr() != q.weight.packed.data_ptr()
    # moves that change nothing keep the packed bytes, the bias its Parameter object
    ptr, bias = q.weight.packed.data_ptr(), q.bias
    q.to("cpu").half().float()
    assert q.weight.packed.data_ptr() == ptr and q.bias is bias
    q.share_memory()
    assert q.weight.packed.is_shared() and q.bias is bias and q.bias.is_shared()
    assert_same(q(x), want, "after share_memory")


def test_assigning_a_weight_keeps_the_layer_on_its_device_and_meta_stays_meta():
    q = tq.QuantLinear(8, 4, device="meta")
    q.weight = torch.zeros(4, 8, device="meta")  # tie_weights under init_empty_weights
    assert q.weight.is_meta and q.weight.dtype == torch.int8
    q = tq.QuantLinear.from_float(nn.Linear(8, 4))
    q.weight = torch.randn(4, 8, dtype=torch.float64)  # another dtype: quantized on the layer's
    assert isinstance(q.weight, PackedWeight) and q.weight_scale.dtype == torch.float32


def test_accelerate_can_move_and_set_the_weight():
    """accelerate rebuilds a parameter it moves as type(param)(value, requires_grad=...)
    (device maps, offload)."""
    utils = pytest.importorskip("accelerate.utils")
    q = tq.QuantLinear.from_float(nn.Linear(16, 8))
    x = torch.randn(2, 16)
    want = q(x)
    codes = q.plain_weight()
    utils.set_module_tensor_to_device(q, "weight", "meta")
    assert q.weight.is_meta and q.weight.shape == (8, 16)
    utils.set_module_tensor_to_device(q, "weight", "cpu", value=codes)
    # (a plain Parameter from there: the ops take either layout, bit-identical)
    assert isinstance(q.weight, nn.Parameter) and q.weight.shape == (8, 16)
    assert_same(q(x), want, "after accelerate set the weight back")
    # from a packed weight, the class accelerate calls lays the value out
    p = tq.QuantLinear.from_float(nn.Linear(16, 8))
    utils.set_module_tensor_to_device(p, "weight", "cpu", value=codes)
    assert isinstance(p.weight, PackedWeight) and isinstance(p.weight, nn.Parameter)
    assert_same(p.plain_weight(), codes, "codes set")


transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("tie", [True, False])
def test_hf_num_parameters_and_tie_weights_on_a_converted_model(tie):
    model = tiny_llama(tie=tie)
    n = model.num_parameters()
    trainable = model.num_parameters(only_trainable=True)
    ids = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tied head's warning
        tq.quantize_model(model, smoothing="off", progress=False)
    assert isinstance(model.lm_head, tq.QuantLinear)
    # the tied head counts once before, and its int8 copy on its own after
    assert model.num_parameters() == n + (model.lm_head.weight.numel() if tie else 0)
    assert model.num_parameters(only_trainable=True) < trainable
    held = model.lm_head.weight
    with torch.no_grad():
        before = model(ids).logits
    # tied: assigns the embedding (a float Parameter) to lm_head.weight, which
    # quantizes it again, to the same codes; untied: nothing to do
    model.tie_weights()
    assert isinstance(model.lm_head.weight, PackedWeight)
    assert (model.lm_head.weight is not held) == tie
    assert model.model.embed_tokens.weight.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
