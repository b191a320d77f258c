"""LoRA adapters on quantized layers through peft (torch_quant.lora): a tiny
Llama built from a config, quantized by quantize_ or loaded with
TorchQuantConfig, LoRA on q/v, trained on a fixed text."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torch_quant as tq

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
from torch_quant.lora import QuantLoraLinear, register_lora  # noqa: E402

from model_helpers import tiny_llama  # noqa: E402


# a fixed text, as token ids: a short sentence repeated, which LoRA on the
# attention can learn within a few steps
TEXT = torch.tensor([[5, 17, 33, 8, 61, 2, 44, 90, 12, 7, 29, 71, 3, 55, 18, 40] * 4])


def quantized(mode="symmetric", granularity="per_token"):
    calib = [{"input_ids": TEXT[:, :32]}] if granularity == "per_tensor" else None
    return tq.quantize_(tiny_llama(), tq.QuantConfig(mode, granularity, skip="lm_head",
                                                     smoothing="off"), calib, progress=False)


def lora(model, r=8):
    config = register_lora(peft.LoraConfig(target_modules=["q_proj", "v_proj"], r=r,
                                           lora_alpha=16, lora_dropout=0.0))
    return peft.get_peft_model(model, config)


def layer_name(name):
    """A quantized layer's name in the model before peft wrapped it."""
    return name.removeprefix("base_model.model.").replace(".base_layer", "")


def int8_state(model):
    """Each quantized layer's int8 codes and weight scales."""
    return {layer_name(n): (m.plain_weight().clone(), m.weight_scale.clone())
            for n, m in model.named_modules() if isinstance(m, tq.QuantLinear)}


def train(model, steps=30, lr=3e-2):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        loss = model(input_ids=TEXT, labels=TEXT).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("mode,granularity", [("symmetric", "per_token"),
                                              ("asymmetric", "per_token"),
                                              ("asymmetric", "per_tensor")])
def test_lora_on_a_quantized_llama_learns_and_leaves_the_int8_base_alone(mode, granularity):
    model = quantized(mode, granularity)
    before = int8_state(model)
    pm = lora(model)
    targets = [m for n, m in pm.named_modules() if isinstance(m, QuantLoraLinear)]
    assert len(targets) == 4  # q_proj and v_proj of two layers
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    losses = train(pm)
    # it learns, as the same LoRA on the float model does (within 3%)
    float_losses = train(peft.get_peft_model(tiny_llama(), peft.LoraConfig(
        target_modules=["q_proj", "v_proj"], r=8, lora_alpha=16, lora_dropout=0.0)))
    if granularity == "per_token":
        assert losses[-1] < 0.9 * losses[0], losses
        assert abs(losses[-1] - float_losses[-1]) < 0.03 * float_losses[-1], (losses,
                                                                             float_losses)
    else:  # static ranges, calibrated before training, clip what the adapters add
        assert losses[-1] < losses[0] - 0.1, losses
    # the int8 weights, their scales: bit for bit as before
    after = int8_state(pm)
    assert before.keys() == after.keys() and len(before) == 14
    for n in before:
        assert all(torch.equal(a, b) for a, b in zip(before[n], after[n])), n
    # the adapters are what changed the output
    pm.eval()
    with torch.no_grad():
        tuned = pm(input_ids=TEXT).logits
        with pm.disable_adapter():
            base = pm(input_ids=TEXT).logits
    assert not torch.allclose(tuned, base)


def test_lora_gradient_reaches_layers_before_a_quantized_one():
    """Adapters on q_proj of the first layer learn through the quantized
    layers after them (the ops' gradient for x), not only from the loss."""
    pm = lora(quantized())
    loss = pm(input_ids=TEXT, labels=TEXT).loss
    loss.backward()
    a = pm.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_lora_on_a_model_loaded_with_torch_quant_config(tmp_path):
    hf = pytest.importorskip("torch_quant.hf")
    tiny_llama().save_pretrained(tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, quantization_config=hf.TorchQuantConfig(act_mode="symmetric"))
    assert isinstance(model.model.layers[0].self_attn.q_proj, tq.QuantLinear)
    before = int8_state(model)
    pm = lora(model)
    losses = train(pm, steps=20)
    assert losses[-1] < losses[0]
    after = int8_state(pm)
    assert before.keys() == after.keys()
    assert all(torch.equal(a, b) for n in before for a, b in zip(before[n], after[n]))


def test_merge_is_refused_clearly_and_unload_gives_the_quantized_model_back():
    model = quantized()
    x = TEXT[:, :16]
    with torch.no_grad():
        want = model(input_ids=x).logits
    pm = lora(model)
    train(pm, steps=3)
    with pytest.raises(ValueError, match=r"cannot be merged into a QuantLinear .*unload\(\)"):
        pm.merge_and_unload()
    back = pm.unload()
    assert isinstance(back.model.layers[0].self_attn.q_proj, tq.QuantLinear)
    back.eval()
    with torch.no_grad():
        assert torch.equal(back(input_ids=x).logits, want)


def test_without_registration_peft_refuses_and_weight_based_options_are_rejected():
    with pytest.raises(ValueError, match="not supported"):
        peft.get_peft_model(quantized(), peft.LoraConfig(target_modules=["q_proj"]))
    for bad in (dict(init_lora_weights="pissa"), dict(use_dora=True)):
        config = register_lora(peft.LoraConfig(target_modules=["q_proj"], **bad))
        with pytest.raises(ValueError, match=r"torch_quant\.lora: .*"):
            peft.get_peft_model(quantized(), config)
    with pytest.raises(TypeError, match="register_lora: config must be a peft.LoraConfig"):
        register_lora({"target_modules": ["q_proj"]})


def test_adapters_save_and_load_back(tmp_path):
    pm = lora(quantized())
    train(pm, steps=5)
    pm.save_pretrained(tmp_path)
    pm.eval()
    with torch.no_grad():
        want = pm(input_ids=TEXT).logits
    config = register_lora(peft.LoraConfig.from_pretrained(tmp_path))
    again = peft.PeftModel.from_pretrained(quantized(), tmp_path, config=config).eval()
    with torch.no_grad():
        assert torch.equal(again(input_ids=TEXT).logits, want)


def test_the_example_in_the_docs_runs_and_learns(tmp_path, monkeypatch):
    """docs/conversion.md, "Fine-tune with LoRA", run as written."""
    import pathlib
    import re
    doc = (pathlib.Path(__file__).parents[1] / "docs" / "conversion.md").read_text()
    section = doc[doc.index("## Fine-tune with LoRA"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "conversion.md", "exec"), ns)
    losses = ns["losses"]
    assert len(losses) == 30 and losses[-1] < 0.9 * losses[0]
    assert (tmp_path / "adapters" / "adapter_config.json").exists()
    assert isinstance(ns["again"], peft.LoraConfig)


def test_transformers_trainer_runs_lora_on_a_torch_quant_config_model(tmp_path):
    """transformers' Trainer accepts the quantized model (the quantizer says it
    is trainable: adapters on frozen int8 layers) and its steps train them."""
    pytest.importorskip("accelerate")
    hf = pytest.importorskip("torch_quant.hf")
    tiny_llama().save_pretrained(tmp_path / "float")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "float", quantization_config=hf.TorchQuantConfig())
    pm = lora(model)
    before = int8_state(pm)
    a = pm.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight
    start = a.detach().clone()
    rows = [{"input_ids": TEXT[0], "labels": TEXT[0]}] * 4
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=3,
                                          per_device_train_batch_size=2, learning_rate=1e-2,
                                          report_to=[], save_strategy="no", use_cpu=True)
    transformers.Trainer(model=pm, args=args, train_dataset=rows).train()
    assert not torch.equal(a.detach(), start)
    after = int8_state(pm)
    assert all(torch.equal(x, y) for n in before for x, y in zip(before[n], after[n]))
