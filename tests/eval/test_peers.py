"""The peers' rows of python -m torch_quant.eval (torch_quant/peers.py) on a
tiny model built from a config: each row is the perplexity of a copy that the
peer's own API quantized, computed by hand on the same windows; --skip is
honoured; a missing peer is a note, not an error; --modes all; --compile."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from torch_quant.eval import cli as tq_eval
from torch_quant.eval import modes as eval_modes
from torch_quant.eval import peers

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
from eval_helpers import by_hand, cli_args, ids_of, make_tiny  # noqa: E402

PEER_MODES = list(peers.PEERS)
# the peers' own deprecation notices; torch.compile's about torchao's tensor subclass
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:Int8Tensor does not implement")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny"))


def _need(mode):
    reason = peers.unavailable(mode)
    if reason is not None:
        pytest.skip(reason)


def _by_the_peer(mode, model, skip):
    """The copy converted by the peer's own API, called here, not by peers.py."""
    m = copy.deepcopy(model)
    names = [n for n, mod in m.named_modules() if type(mod) is nn.Linear and n not in skip]
    if mode == "peer-quantize-dynamic":
        from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic
        return quantize_dynamic(m, {n: default_dynamic_qconfig for n in names}, dtype=torch.qint8)
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    quantize_(m, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda mod, fqn: fqn in names)
    return m


@pytest.mark.parametrize("mode", PEER_MODES)
def test_peer_row_is_the_peers_own_conversion(tiny, tmp_path, capsys, mode):
    _need(mode)
    args, out = cli_args(tiny, tmp_path, "--modes", f"fp32,w8a8-symmetric,{mode}")
    assert tq_eval.main(args) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    fp32, ours, peer = res["results"]
    assert peer["mode"] == mode and peer["peer"] == peers.PEERS[mode]
    assert ours["peer"] is None and fp32["peer"] is None
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny[0]).eval()
    ids = ids_of(*tiny)[:160]
    _, _, ref_logp = by_hand(model, ids, 24, 10)
    q = _by_the_peer(mode, model, ["lm_head"])
    nll, count, q_logp = by_hand(q, ids, 24, 10)
    assert peer["tokens_scored"] == count == fp32["tokens_scored"] == 159
    assert peer["nll_sum"] == pytest.approx(nll, rel=1e-5)
    assert peer["nll_sum"] != pytest.approx(fp32["nll_sum"], rel=1e-6)  # not the float model
    assert peer["perplexity"] == pytest.approx(math.exp(nll / count))
    kl = float((ref_logp.exp() * (ref_logp - q_logp)).sum(-1).mean())
    assert peer["kl_divergence"] == pytest.approx(kl, rel=2e-2) and kl > 0
    assert peer["weight_bytes"] < fp32["weight_bytes"] / 2
    assert peer["layers"] == [] and peer["smoothing"] is None and peer["seconds"] > 0
    # the table marks the row as a peer's
    assert f"{mode}: a peer, {peers.PEERS[mode]}" in printed
    assert f"{mode}: smoothing" not in printed
    assert f"{mode}: converted in" in printed and "s (14 layers)" in printed


@pytest.mark.parametrize("mode", PEER_MODES)
def test_skip_is_honoured(tiny, mode):
    _need(mode)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny[0]).eval()
    everything = peers.convert(mode, model, [])
    assert peers.quantized_layers(mode, everything) == 15  # 2 x (4 + 3) and lm_head
    for skip in (["lm_head", "model.layers.0.*"], ["lm_head", "model.layers.0"]):
        # a glob, or a module holding the layers: as ours matches --skip
        some = peers.convert(mode, model, skip)
        assert peers.quantized_layers(mode, some) == 7, skip
    assert peers.quantized_layers(mode, model) == 0  # a copy: the model is untouched


def test_missing_peer_is_a_note(tiny, tmp_path, capsys, monkeypatch):
    real = peers.unavailable

    def fake(mode):
        if mode == "peer-torchao-int8":
            return f"{mode}: torchao is not installed (pretend)"
        return real(mode)

    monkeypatch.setattr(eval_modes, "peer_unavailable", fake)
    args, out = cli_args(tiny, tmp_path, "--modes", "fp32,peer-torchao-int8")
    assert tq_eval.main(args) == 0
    printed = capsys.readouterr().out
    assert "note: left out peer-torchao-int8: torchao is not installed (pretend)" in printed
    assert [r["mode"] for r in json.loads(out.read_text())["results"]] == ["fp32"]
    # nothing left to run: an error that says so
    args, _ = cli_args(tiny, tmp_path, "--modes", "peer-torchao-int8")
    assert tq_eval.main(args) == 2
    assert "none of the modes can run here" in capsys.readouterr().err


def test_modes_all(tiny, tmp_path, monkeypatch):
    seen = {}

    def record(args, log=print):
        seen["modes"] = list(args.modes)
        return {}

    monkeypatch.setattr(tq_eval, "run", record)
    args, _ = cli_args(tiny, tmp_path, "--modes", "all")
    assert tq_eval.main(args) == 0
    assert seen["modes"] == ["fp32", "w8a8-symmetric", "w8a8-asymmetric", "w8a8-auto",
                             *PEER_MODES]
    args, _ = cli_args(tiny, tmp_path, "--modes", "fp32,peer-nope")
    assert tq_eval.main(args) == 2


@pytest.mark.slow
def test_compile_runs_every_mode_compiled(tiny, tmp_path):
    """--compile: every row's model runs under torch.compile; fp32 and ours
    score as in eager (the same kernels, other fusion of the float ops)."""
    modes = ["fp32", "w8a8-asymmetric", *[m for m in PEER_MODES if peers.unavailable(m) is None]]
    args, out = cli_args(tiny, tmp_path, "--modes", ",".join(modes))
    assert tq_eval.main(args) == 0
    eager = json.loads(out.read_text())
    assert tq_eval.main([*args, "--compile"]) == 0
    compiled = json.loads(out.read_text())
    assert compiled["compiled"] and not eager["compiled"]
    assert [r["mode"] for r in compiled["results"]] == modes
    # the per-layer report names the layers as eager does (not the compiled wrapper's)
    assert [lay["name"] for lay in compiled["results"][1]["layers"]] == \
        [lay["name"] for lay in eager["results"][1]["layers"]]
    for e, c in zip(eager["results"], compiled["results"]):
        assert c["tokens_scored"] == e["tokens_scored"] == 159
        tol = 1e-3 if c["mode"] in ("fp32", "w8a8-asymmetric") else 5e-2
        assert c["nll_sum"] == pytest.approx(e["nll_sum"], rel=tol), c["mode"]
