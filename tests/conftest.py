"""Shared fixtures and helpers of the torch_quant test suite.

* ``isa``: parametrised over every CPU kernel path this machine can run
  (``torch_quant._C._supported_cpu_isas()``), restoring the automatic choice
  afterwards, so numeric tests check each path against the oracle.
* ``gen``: a ``torch.Generator`` seeded from the test's id (reproducible, but
  different data in different tests).
* helpers to compare with ``torch.quantize_per_tensor`` / ``quantize_per_channel``.
"""

from __future__ import annotations

import contextlib
import zlib
from typing import Optional

import numpy as np
import pytest
import torch

import torch_quant as tq
from torch_quant.ops import reference as ref

SUPPORTED_ISAS = list(tq._C._supported_cpu_isas())
FLT_EPSILON = 2.0**-23
MODES = ("symmetric", "asymmetric")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long case (subprocesses, builds, the fuzz "
                                       "run); `make test-fast` leaves these out")
    # torch warns that its quantized tensor creation functions are deprecated;
    # the tests use them only as an oracle.
    config.addinivalue_line("filterwarnings", "ignore:.*quantize_per_tensor.*:UserWarning")
    config.addinivalue_line("filterwarnings", "ignore:.*quantized tensor.*:UserWarning")
    # opcheck / export go through torch.jit internals that warn about themselves
    config.addinivalue_line("filterwarnings", "ignore:.*torch.jit.*:DeprecationWarning")


@pytest.fixture(params=SUPPORTED_ISAS)
def isa(request):
    """Force the CPU kernels of one instruction set for the test's duration."""
    tq._C._set_cpu_isa(request.param)
    assert tq._C._cpu_isa() == request.param
    try:
        yield request.param
    finally:
        tq._C._set_cpu_isa("best")


@pytest.fixture
def gen(request):
    seed = zlib.crc32(request.node.nodeid.encode())
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(n)


@contextlib.contextmanager
def using_isa(name: str):
    tq._C._set_cpu_isa(name)
    try:
        yield
    finally:
        tq._C._set_cpu_isa("best")


@contextlib.contextmanager
def num_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ---------------------------------------------------------------------------
# comparison helpers


def assert_same(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Bit-identical: same dtype, shape and values (NaNs at the same places)."""
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if actual.is_floating_point():
        # Compare bit patterns (distinguishes -0.0 from 0.0, and NaN payloads
        # are irrelevant for our ops: only check NaN positions).
        nan_a, nan_e = torch.isnan(actual), torch.isnan(expected)
        assert torch.equal(nan_a, nan_e), f"{what}: NaN positions differ"
        a = torch.where(nan_a, 0, actual)
        e = torch.where(nan_e, 0, expected)
        bad = a != e
    else:
        bad = actual != expected
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        vals = [(i, actual[tuple(i)].item(), expected[tuple(i)].item()) for i in idx]
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {actual.numel()} elements differ; first "
            f"(index, got, expected): {vals}"
        )


def qrange(mode: str, bits: int = 8):
    return ref.qrange(mode, bits)


def torch_qdtype(mode: str):
    return torch.qint8 if mode == "symmetric" else torch.quint8


def torch_per_tensor(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, mode: str):
    """Codes of torch.quantize_per_tensor with the same float32 scale."""
    return torch.quantize_per_tensor(
        x.float(), float(scale.float().item()), int(zero_point.item()), torch_qdtype(mode)
    ).int_repr()


def torch_per_channel(x, scale, zero_point, mode, axis):
    return torch.quantize_per_channel(
        x.float(), scale.float().double(), zero_point.long(), axis % x.dim(), torch_qdtype(mode)
    ).int_repr()


def double_rounding_points(x, scale, zero_point, axis, mode=None, bits=8):
    """Where rounding x*inv_scale to float32 before adding the zero point (what
    torch.quantize_per_channel does) changes the code compared with a single
    rounding of x*inv_scale + zero_point (what torch_quant does)."""
    shape = [1] * x.dim()
    shape[axis % x.dim()] = -1
    x = x.float()
    inv = (1.0 / scale.float()).reshape(shape)
    zp = zero_point.float().reshape(shape)
    twice = torch.round((x * inv) + zp)
    once = torch.round((x.double() * inv.double() + zp.double()).float())
    if mode is not None:
        qmin, qmax = qrange(mode, bits)
        twice, once = twice.clamp(qmin, qmax), once.clamp(qmin, qmax)
    return twice != once


def random_scale(gen: torch.Generator, n: Optional[int] = None) -> torch.Tensor:
    """Random positive float32 scales spread over many binades."""
    shape = [] if n is None else [n]
    e = torch.empty(shape).uniform_(-12.0, 6.0, generator=gen)
    return torch.exp2(e).float()


def random_zero_point(gen, mode, bits=8, n=None):
    qmin, qmax = qrange(mode, bits)
    shape = [] if n is None else [n]
    return torch.randint(qmin, qmax + 1, shape, generator=gen, dtype=torch.int32)


def data_for(gen, shape, scale_hint: float = 1.0, dtype=torch.float32):
    """Gaussian data scaled so that it spans ~±200 codes of `scale_hint`
    (so some values clamp)."""
    return (torch.randn(shape, generator=gen) * (70.0 * scale_hint)).to(dtype)


def snapshot(model) -> tuple:
    """Everything a failed conversion or load could have changed: the module
    types and every state-dict tensor (cloned)."""
    return ([type(m).__name__ for m in model.modules()],
            {k: v.clone() for k, v in model.state_dict().items()})


def assert_untouched(model, snap: tuple) -> None:
    """The model is as ``snapshot`` saw it, bit for bit (NaNs included)."""
    types, tensors = snap
    assert [type(m).__name__ for m in model.modules()] == types
    now = model.state_dict()
    assert now.keys() == tensors.keys()
    for k, v in tensors.items():
        assert now[k].dtype == v.dtype and torch.equal(
            now[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)), k


BITS = list(range(2, 9))  # every bit width the ops take
F32 = np.float32


def f32(v) -> float:
    """A Python float holding the float32 nearest to v."""
    return float(np.float32(v))


def raises(op: str, arg: str):
    """pytest.raises for an error whose message names `op` and then `arg` (as a word)."""
    return pytest.raises((RuntimeError, ValueError),
                         match=rf"{op.replace('.', r'[.]')}\b.*\b{arg}\b")


def assert_fake_raises_as_real(fn, real: dict, op: str, arg: str) -> None:
    """fn(real tensors) raises naming op and arg (the case is a real error), and
    fn(the same as fake tensors) raises the same message word for word: the
    fake kernel and the C++ check state one rule. (A case with a meta tensor
    runs the fake kernel on both sides, register_fake also serving Meta: the
    C++ device checks are compared in test_cuda.py, where a GPU exists.)"""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with raises(op, arg) as real_err:
        fn(real)
    with FakeTensorMode() as mode:
        fake = {k: mode.from_tensor(v) for k, v in real.items()}
        with raises(op, arg) as fake_err:
            fn(fake)
    first = [str(e.value).splitlines()[0] for e in (real_err, fake_err)]
    assert first[1] == first[0], f"fake kernel: {first[1]!r}\nC++ kernel:  {first[0]!r}"
