"""Everyday PyTorch usage that must behave as with torch.nn: half precision on the default
backend, autocast, editing an output in place before backward, and torch.nn's exception
classes for malformed states."""

import pytest
import torch
from torch import nn

import fastrnn
from conftest import BACKEND, DEVICE
from fastrnn import functional, testing
from helpers import CELLS, make_inputs, make_pair

T, B, I, H = 6, 3, 5, 7
HALF = [torch.bfloat16, torch.float16]
CELL_CLASSES = [(fastrnn.LSTMCell, nn.LSTMCell), (fastrnn.GRUCell, nn.GRUCell), (fastrnn.RNNCell, nn.RNNCell)]


# ----------------------------------------------------------------------------------------
# Half precision (float16 / bfloat16) with the default backend
# ----------------------------------------------------------------------------------------
CPU_HALF = pytest.mark.skipif(
    DEVICE.type != "cpu" or BACKEND == "triton", reason="the triton lane checks half precision in tests/test_triton.py"
)


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


# ----------------------------------------------------------------------------------------
# Autocast
# ----------------------------------------------------------------------------------------
AUTOCAST_CASES = [
    ("lstm", {}, "padded"),
    ("lstm", {"proj_size": 3}, "padded"),
    ("lstm", {}, "packed"),
    ("lstm", {"num_layers": 2, "bidirectional": True}, "padded"),
    ("gru", {}, "padded"),
    ("gru", {}, "packed"),
    ("rnn", {}, "padded"),
    ("rnn", {"nonlinearity": "relu"}, "packed"),
]


def _leaves(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, torch.nn.utils.rnn.PackedSequence):
        return [out.data]
    return [t for o in out for t in _leaves(o)]


def _under_autocast(module, inputs, dtype):
    with torch.autocast(DEVICE.type, dtype=dtype):
        out = _leaves(module(*inputs))
    sum(o.float().sum() for o in out).backward()
    return out, [p.grad for p in module.parameters()]


@pytest.mark.skipif(DEVICE.type != "cpu", reason="CPU autocast rules")
@pytest.mark.parametrize(
    "family,kw,kind",
    AUTOCAST_CASES,
    ids=[f"{f}-{'-'.join(map(str, kw.values())) or 'plain'}-{k}" for f, kw, k in AUTOCAST_CASES],
)
def test_autocast_cpu_bf16_layers(family, kw, kind):
    """Output dtypes are torch.nn's under autocast; values within the bfloat16 bound of
    torch.nn's own autocast output; parameter gradients stay float32."""
    ours, theirs = make_pair(family, I, H, torch.float32, **kw)
    x, _ = make_inputs(kind, family, ours, T, B, I, torch.float32)
    a, ga = _under_autocast(ours, (x,), torch.bfloat16)
    b, gb = _under_autocast(theirs, (x,), torch.bfloat16)
    assert [t.dtype for t in a] == [t.dtype for t in b]
    for u, v in zip(a + ga, b + gb):
        assert testing.rel_rms(u, v) <= testing.bound(torch.bfloat16)
    assert all(g.dtype == torch.float32 for g in ga)


@pytest.mark.skipif(DEVICE.type != "cpu", reason="CPU autocast rules")
@pytest.mark.parametrize("ours_cls,nn_cls", CELL_CLASSES, ids=lambda c: c.__name__)
def test_autocast_cpu_bf16_cells(ours_cls, nn_cls):
    ours, theirs = ours_cls(I, H), nn_cls(I, H)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(B, I)
    a, ga = _under_autocast(ours, (x,), torch.bfloat16)
    b, gb = _under_autocast(theirs, (x,), torch.bfloat16)
    assert [t.dtype for t in a] == [t.dtype for t in b]
    for u, v in zip(a + ga, b + gb):
        assert testing.rel_rms(u, v) <= testing.bound(torch.bfloat16)


@pytest.mark.skipif(DEVICE.type != "cpu", reason="CPU autocast rules")
@pytest.mark.parametrize("cid,family,kw", CELLS, ids=[c[0] for c in CELLS])
def test_autocast_cpu_fp16_layers(cid, family, kw):
    """float16 autocast: torch.nn's oneDNN LSTM refuses it on CPU; fastrnn runs it within
    the float16 bound of the float32 reference with the float16-rounded weights."""
    ours, _ = make_pair(family, I, H, torch.float32, **kw)
    x = torch.randn(T, B, I)
    a, _ = _under_autocast(ours, (x,), torch.float16)
    assert a[0].dtype == (torch.float32 if family == "gru" else torch.float16)
    ref = testing.oracle(ours.half(), torch.float32)
    assert testing.rel_rms(a[0], ref(x.half().float())[0]) <= testing.bound(torch.float16)


def test_autocast_rule_cuda():
    """On CUDA every layer and cell op is on autocast's lower-precision list (cuDNN RNNs,
    lstm_cell, gru_cell, rnn_*_cell): everything runs in the autocast dtype. Checked on the
    rule, since this machine may have no GPU."""
    for low in (torch.float16, torch.bfloat16):
        for mode in ("LSTM", "GRU", "RNN_TANH"):
            for cell, packed, proj in ((True, False, False), (False, True, False), (False, False, mode == "LSTM")):
                assert functional.autocast_rule(
                    mode, "cuda", low, cell=cell, packed=packed, proj=proj, state_dtype=torch.float32
                ) == (low, low, low)


# ----------------------------------------------------------------------------------------
# Editing an output in place before backward
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64] if BACKEND != "triton" else [torch.float32], ids=str)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("cid,family,kw", CELLS, ids=[c[0] for c in CELLS])
def test_inplace_edit_of_output(cid, family, kw, batch_first, dtype):
    """out.masked_fill_(mask, 0) then backward: allowed (torch.nn allows it for GRU and RNN,
    and for LSTM except where oneDNN's float32 LSTM raises), with torch.nn's gradients."""
    ours, theirs = make_pair(family, I, H, dtype, batch_first=batch_first, **kw)
    x = torch.randn(*((B, T) if batch_first else (T, B)), I, dtype=dtype, device=DEVICE)
    grads = []
    for m in (ours, theirs):
        xx = x.clone().requires_grad_()
        out = m(xx)[0]
        out.masked_fill_(out.detach() > 0.1, 0)
        try:
            (out * out).sum().backward()
        except RuntimeError as e:
            assert m is theirs and family == "lstm" and dtype == torch.float32, e  # noqa: PT017 (only torch.nn may fail here)
            return
        grads.append([xx.grad, *(p.grad for p in m.parameters())])
    for a, b in zip(*grads):
        assert testing.rel_rms(a, b) <= testing.bound(dtype)


META_LAYERS = [
    (fastrnn.LSTM, nn.LSTM, {}),
    (fastrnn.LSTM, nn.LSTM, dict(proj_size=3)),
    (fastrnn.GRU, nn.GRU, {}),
    (fastrnn.RNN, nn.RNN, dict(nonlinearity="relu")),
]


@pytest.mark.parametrize("ours_cls,nn_cls,kw", META_LAYERS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_meta_device_layers_give_torch_nn_shapes(ours_cls, nn_cls, kw):
    """On the meta device (deferred initialisation, shape inference) a layer runs where
    torch.nn's does, with the same output and gradient shapes and no data; the default
    backend routes meta tensors to the reference equations, which run on any device."""
    x = torch.empty(5, 3, 4, device="meta", requires_grad=True)
    got = []
    for cls in (ours_cls, nn_cls):
        m = cls(4, 6, num_layers=2, bidirectional=True, device="meta", **kw)
        y, h = m(x)
        y.sum().backward()
        hs = h if isinstance(h, tuple) else (h,)
        got.append((y.shape, [t.shape for t in hs], x.grad.shape, [p.grad.shape for p in m.parameters()]))
        assert y.device.type == "meta" and x.grad.device.type == "meta"
        x.grad = None
    assert got[0] == got[1]


@pytest.mark.parametrize("ours_cls,nn_cls,kw", META_LAYERS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_meta_device_packed_input_gives_torch_nn_shapes(ours_cls, nn_cls, kw):
    """A packed input on meta: its lengths come from the (CPU) batch sizes when packing the
    output again, since meta lengths hold no values."""
    x = torch.empty(5, 3, 4, device="meta", requires_grad=True)
    got = []
    for cls in (ours_cls, nn_cls):
        m = cls(4, 6, num_layers=2, bidirectional=True, device="meta", **kw)
        packed = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 2, 3]), enforce_sorted=False)
        y, h = m(packed)
        y.data.sum().backward()
        hs = h if isinstance(h, tuple) else (h,)
        got.append((y.data.shape, y.batch_sizes.tolist(), [t.shape for t in hs], x.grad.shape))
        x.grad = None
    assert got[0] == got[1]


@pytest.mark.parametrize("ours_cls,nn_cls", CELL_CLASSES, ids=lambda v: v.__name__)
def test_meta_device_cells_give_torch_nn_shapes(ours_cls, nn_cls):
    x = torch.empty(3, 4, device="meta")
    shapes = []
    for cls in (ours_cls, nn_cls):
        out = cls(4, 6, device="meta")(x)
        shapes.append([t.shape for t in (out if isinstance(out, tuple) else (out,))])
    assert shapes[0] == shapes[1]


@pytest.mark.parametrize("cls", [fastrnn.PeepholeLSTM, fastrnn.LayerNormLSTM], ids=lambda c: c.__name__)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_meta_device_variants_give_their_cpu_shapes(cls, dtype):
    """The variants (no torch.nn twin) on the meta device: the shapes and dtypes of a CPU run.
    bfloat16 takes the LayerNormLSTM's float32-inside route, which switches autocast off."""
    shapes = []
    for device in ("meta", "cpu"):
        torch.manual_seed(0)
        m = cls(4, 6, num_layers=2, bidirectional=True, device=device, dtype=dtype)
        x = torch.randn(5, 3, 4, dtype=dtype).to(device).requires_grad_()
        y, (h, c) = m(x)
        y.sum().backward()
        shapes.append([(t.shape, t.dtype) for t in (y, h, c, x.grad, *(p.grad for p in m.parameters()))])
    assert shapes[0] == shapes[1]
