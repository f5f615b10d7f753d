"""Everyday PyTorch usage that must behave as with torch.nn: half precision on the default
backend, autocast, editing an output in place before backward, and torch.nn's exception
classes for malformed states."""
import warnings

import pytest
import torch
from torch import nn

import fastrnn
from fastrnn import functional, testing
from conftest import BACKEND, DEVICE
from helpers import CELLS, make_inputs, make_pair

T, B, I, H = 6, 3, 5, 7
HALF = [torch.bfloat16, torch.float16]
CELL_CLASSES = [(fastrnn.LSTMCell, nn.LSTMCell), (fastrnn.GRUCell, nn.GRUCell), (fastrnn.RNNCell, nn.RNNCell)]


# ----------------------------------------------------------------------------------------
# Half precision (float16 / bfloat16) with the default backend
# ----------------------------------------------------------------------------------------
CPU_HALF = pytest.mark.skipif(DEVICE.type != "cpu" or BACKEND == "triton",
                              reason="the triton lane checks half precision in tests/test_triton.py")


@CPU_HALF
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("cid,family,kw", CELLS, ids=[c[0] for c in CELLS])
def test_half_precision_layers(cid, family, kw, dtype):
    """A float16/bfloat16 module runs on the default backend and stays within 1e-2 of the
    float32 reference with the same weights: outputs, final states and every gradient."""
    m, _ = make_pair(family, I, H, dtype, num_layers=2, bidirectional=True, **kw)
    for kind in ("padded", "packed"):
        inputs = make_inputs(kind, family, m, T, B, I, dtype)
        report = testing.compare(m, testing.oracle(m, torch.float32), *inputs, sync_weights=False)
        assert report.passed, f"\n{report}"
        assert m(*inputs)[0].data.dtype == dtype


@CPU_HALF
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("ours_cls", [c[0] for c in CELL_CLASSES], ids=lambda c: c.__name__)
def test_half_precision_cells(ours_cls, dtype):
    m = ours_cls(I, H).to(dtype)
    report = testing.compare(m, testing.oracle(m, torch.float32), torch.randn(B, I, dtype=dtype), sync_weights=False)
    assert report.passed, f"\n{report}"
