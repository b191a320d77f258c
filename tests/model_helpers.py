"""Helpers shared by the model-conversion tests (independent of the library):
oracles built from PyTorch's own quantizers and observers, small models,
input capture."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.ao.quantization.observer import MinMaxObserver

from torch_quant.nn import QuantLinear

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
GRANULARITIES = ("per_token", "per_tensor")
EPS = 2.0**-23




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


# a tiny model with every kind of linear layer (nested, Conv1D, a head)
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


def tiny_llama(seed: int = 0, tie: bool = False):
    """A 2-layer random Llama built from a config (no download), vocabulary 96."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=96,
                                   tie_word_embeddings=tie)
    return transformers.LlamaForCausalLM(cfg).eval()
