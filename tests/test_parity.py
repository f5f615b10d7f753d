"""Parity with torch.nn and the float64 reference on every configuration torch.nn accepts.

Every output, final state and gradient (input, h0, c0, every weight) is compared with the
bounds of the numerics table (fastrnn.testing.BOUNDS): fp32 against torch.nn at 2e-5, fp64
against the autograd reference (and torch.nn) at 1e-9.
"""

import itertools

import pytest
import torch

from fastrnn import testing
from helpers import CELLS, make_inputs, make_pair

T, B, I, H = 7, 3, 5, 6

PARAMS = [
    pytest.param(
        cell,
        layers,
        bidir,
        bf,
        bias,
        kind,
        dtype,
        id=f"{cid}-L{layers}-{'bi' if bidir else 'uni'}-{'bf' if bf else 'tm'}-"
        f"{'bias' if bias else 'nobias'}-{kind}-{str(dtype)[6:]}",
    )
    for (cid, *cell), layers, bidir, bf, bias, kind, dtype in itertools.product(
        CELLS,
        (1, 2),
        (False, True),
        (False, True),
        (True, False),
        ("padded", "packed", "unbatched"),
        (torch.float32, torch.float64),
    )
]


@pytest.mark.parametrize("cell,layers,bidir,batch_first,bias,kind,dtype", PARAMS)
def test_parity(cell, layers, bidir, batch_first, bias, kind, dtype):
    family, kw = cell
    ours, theirs = make_pair(
        family, I, H, dtype, num_layers=layers, bidirectional=bidir, batch_first=batch_first, bias=bias, **kw
    )
    inputs = make_inputs(kind, family, ours, T, B, I, dtype)
    report = testing.compare(ours, theirs, *inputs)
    assert report.passed, f"\n{report}"
    if dtype == torch.float64:
        report = testing.compare(ours, testing.oracle(ours), *inputs, sync_weights=False)
        assert report.passed, f"\n{report}"


@pytest.mark.parametrize("cid,family,kw", CELLS, ids=[c[0] for c in CELLS])
def test_parity_odd_sizes_and_no_state(cid, family, kw):
    """Larger odd sizes, zero initial state (hx omitted), sorted packed input."""
    ours, theirs = make_pair(family, 13, 17, torch.float32, num_layers=2, bidirectional=True, **kw)
    x = torch.randn(23, 5, 13)
    report = testing.compare(ours, theirs, x)
    assert report.passed, f"\n{report}"
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([23, 20, 11, 4, 1]))
    report = testing.compare(ours, theirs, packed)
    assert report.passed, f"\n{report}"


@pytest.mark.parametrize("cid,family,kw", CELLS, ids=[c[0] for c in CELLS])
def test_dropout_between_layers_matches_torch(cid, family, kw):
    """Training-mode dropout between layers draws the same mask as torch.nn for a given seed."""
    ours, theirs = make_pair(family, I, H, torch.float64, num_layers=3, dropout=0.5, **kw)
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.manual_seed(7)
    a = ours(x)[0]
    torch.manual_seed(7)
    b = theirs(x)[0]
    assert testing.rel_rms(a, b) <= testing.bound(torch.float64)
    ours.eval()
    theirs.eval()
    assert testing.rel_rms(ours(x)[0], theirs(x)[0]) <= testing.bound(torch.float64)


@pytest.mark.parametrize("cid,family,kw", CELLS, ids=[c[0] for c in CELLS])
def test_empty_batch(cid, family, kw):
    ours, theirs = make_pair(family, I, H, torch.float32, **kw)
    x = torch.randn(T, 0, I, requires_grad=True)
    a, b = ours(x), theirs(x)
    assert a[0].shape == b[0].shape
    a[0].sum().backward()
    assert x.grad.shape == x.shape and all(p.grad is not None for p in ours.parameters())
