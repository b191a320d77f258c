"""The value checks the CUDA ops make once per tensor version
(csrc/checked_values.h). They are device-agnostic, so they are driven here on
CPU tensors through torch_quant._C hooks; tests/test_cuda.py checks on a GPU
that the ops use them (no host read on the second call)."""

from __future__ import annotations

import pytest
import torch

import torch_quant as tq
from torch_quant import _C

OP = "torch_quant._check_scale_values_once"


@pytest.fixture(autouse=True)
def _fresh():
    _C._clear_checked_values()
    yield
    _C._clear_checked_values()


def reads() -> int:
    return _C._checked_values_info()[1]


def check_scale(t):
    _C._check_scale_values_once(t)


def check_zp(t, qmin=-128, qmax=127):
    return _C._check_zero_point_values_once(t, qmin, qmax)


def test_a_checked_scale_is_not_read_again():
    s = torch.rand(7) + 0.1
    before = reads()
    check_scale(s)
    assert reads() == before + 1
    check_scale(s)
    check_scale(s)
    assert reads() == before + 1
    assert _C._checked_values_info()[0] == 1


@pytest.mark.parametrize("write", [
    lambda s: s.fill_(-1.0),
    lambda s: s.__setitem__(3, 0.0),
    lambda s: s.copy_(torch.full_like(s, float("nan"))),
    lambda s: s.mul_(float("inf")),
    lambda s: s.set_(torch.zeros(7)),
    lambda s: s[2:4].zero_(),  # through a view: the version counter is shared
])
def test_an_in_place_write_is_checked_again(write):
    s = torch.rand(7) + 0.1
    check_scale(s)
    write(s)
    with pytest.raises(RuntimeError, match=r"torch_quant\._check_scale_values_once: scale must "
                                           r"be finite and > 0.*at index"):
        check_scale(s)


def test_a_bad_scale_is_never_remembered():
    s = torch.tensor([0.5, -1.0])
    for _ in range(2):
        with pytest.raises(RuntimeError, match=r"scale must be finite and > 0.*-1 at index 1"):
            check_scale(s)
    assert _C._checked_values_info()[0] == 0


def test_a_view_is_its_own_tensor():
    """A view of a checked tensor is checked itself (another TensorImpl)."""
    s = torch.tensor([1.0, 2.0, 0.0])
    with pytest.raises(RuntimeError, match="at index 2"):
        check_scale(s)
    check_scale(s[:2])  # the valid part
    with pytest.raises(RuntimeError, match="at index 2"):
        check_scale(s)


def test_zero_point_bounds_and_range():
    z = torch.tensor([3, -5, 17], dtype=torch.int32)
    before = reads()
    assert check_zp(z) == (-5, 17)
    assert check_zp(z) == (-5, 17)
    assert reads() == before + 1
    # Known bounds outside another range: read again, so the error names the index.
    with pytest.raises(RuntimeError, match=r"zero_point must be in \[0, 255\], got -5 at index 1"):
        check_zp(z, 0, 255)
    assert check_zp(torch.zeros(0, dtype=torch.int64)) == (0, 0)
    # int64 values that would wrap in int32 are out of range, not in it.
    with pytest.raises(RuntimeError, match="got 4294967296"):
        check_zp(torch.tensor([2**32], dtype=torch.int64))


def test_zero_point_write_is_seen():
    z = torch.zeros(4, dtype=torch.int32)
    assert check_zp(z) == (0, 0)
    z[1] = 300
    with pytest.raises(RuntimeError, match="got 300 at index 1"):
        check_zp(z)


def test_inference_tensors_are_read_every_time():
    with torch.inference_mode():
        s = torch.rand(3) + 0.1
    before = reads()
    check_scale(s)
    check_scale(s)
    assert reads() == before + 2
    assert _C._checked_values_info()[0] == 0


def test_gone_tensors_are_dropped_and_clear_forgets():
    keep = torch.rand(3) + 0.1
    check_scale(keep)
    for _ in range(5):
        check_scale(torch.rand(3) + 0.1)
    assert _C._checked_values_info()[0] == 1  # only `keep` is alive
    tq.clear_checked_values()
    before = reads()
    check_scale(keep)
    assert reads() == before + 1


def test_many_live_tensors_stay_correct():
    """Past the cache's capacity entries are dropped, never trusted wrongly."""
    tensors = [torch.rand(2) + 0.1 for _ in range(9000)]
    for t in tensors:
        check_scale(t)
    assert _C._checked_values_info()[0] <= 8192
    tensors[0].zero_()
    with pytest.raises(RuntimeError, match="at index 0"):
        check_scale(tensors[0])
