"""C++ backend specifics: direct-call validation, non-contiguous input, long sequences."""

import pytest
import torch

import fastrnn
from conftest import BACKEND
from fastrnn import testing

pytestmark = [
    pytest.mark.skipif(fastrnn.available_backends()["cpp"] != "available", reason="C++ extension not built"),
    pytest.mark.skipif(BACKEND not in ("cpp", "auto"), reason="runs in the cpp lane"),
]


def test_direct_calls_raise_not_crash():
    from fastrnn import _C

    x = torch.randn(3, 2, 8)
    with pytest.raises(RuntimeError, match="w_hh must have shape"):
        _C.lstm_forward(x, torch.randn(8, 3), None, torch.randn(2, 2), torch.randn(2, 2), None, False)
    with pytest.raises(RuntimeError, match="supports float32 and float64, got Half"):
        _C.rnn_forward(x.half(), torch.randn(8, 8).half(), torch.randn(2, 8).half(), None, False, "tanh")
    with pytest.raises(RuntimeError, match="lengths must be a CPU int64 tensor"):
        _C.gru_forward(torch.randn(3, 2, 6), torch.randn(6, 2), None, torch.randn(2, 2), torch.tensor([1, 2, 3]), False)
    with pytest.raises(RuntimeError, match="h0 has dtype Double"):
        _C.rnn_forward(x, torch.randn(8, 8), torch.randn(2, 8).double(), None, False, "tanh")
    with pytest.raises(RuntimeError, match="Unknown nonlinearity"):
        _C.rnn_forward(x, torch.randn(8, 8), torch.randn(2, 8), None, False, "gelu")


@pytest.mark.parametrize("family", ["lstm", "gru", "rnn"])
def test_non_contiguous_input_and_state(family):
    cls, ncls = {
        "lstm": (fastrnn.LSTM, torch.nn.LSTM),
        "gru": (fastrnn.GRU, torch.nn.GRU),
        "rnn": (fastrnn.RNN, torch.nn.RNN),
    }[family]
    ours = cls(5, 7, num_layers=2, bidirectional=True, backend="cpp")
    theirs = ncls(5, 7, num_layers=2, bidirectional=True)
    x = torch.randn(3, 9, 5).transpose(0, 1)  # (T, B, I) view of a batch-major buffer
    h = torch.randn(3, 4, 7).transpose(0, 1)  # (L*D, B, H), non-contiguous
    hx = (h, torch.randn(4, 3, 7)) if family == "lstm" else h
    assert not x.is_contiguous()
    report = testing.compare(ours, theirs, x, hx)
    assert report.passed, f"\n{report}"


def test_long_sequence_memory_is_linear_in_T():
    """T=20000: forward+backward run, match the float64 reference, and the saved workspace
    is exactly (T, B, 4H) gates + (T, B, H) cell states."""
    T, B, I, H = 20000, 2, 4, 8
    lstm = fastrnn.LSTM(I, H, backend="cpp").double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    x_proj = torch.randn(T, B, 4 * H, dtype=torch.float64)
    y, h, c, gates, cs = torch.ops.fastrnn.lstm_recurrence(
        x_proj,
        lstm.weight_hh_l0.detach(),
        None,
        torch.zeros(B, H, dtype=torch.float64),
        torch.zeros(B, H, dtype=torch.float64),
        None,
        False,
        "cpp",
    )
    assert gates.shape == (T, B, 4 * H) and cs.shape == (T, B, H)
    report = testing.compare(lstm, testing.oracle(lstm), x, sync_weights=False)
    assert report.passed, f"\n{report}"


@pytest.mark.parametrize("family", ["lstm", "gru"])
def test_inference_keeps_no_backward_workspace(family):
    """Under no_grad the per-step gates/cell states are not kept, and the result is the
    same as with them (bitwise: same kernels, same order)."""
    from fastrnn import ops

    T, B, H = 50, 3, 8
    x = torch.randn(T, B, (4 if family == "lstm" else 3) * H)
    w = torch.randn(x.shape[-1], H) * 0.3
    h0 = torch.randn(B, H)
    lengths = torch.tensor([50, 20, 35])
    args = (x, w, None, h0, torch.randn(B, H)) if family == "lstm" else (x, w, torch.randn(H), h0)
    entry = ops.lstm if family == "lstm" else ops.gru
    with torch.no_grad():
        lean = entry(*args, lengths, True, "cpp")
    full = (torch.ops.fastrnn.lstm_recurrence if family == "lstm" else torch.ops.fastrnn.gru_recurrence)(
        *args, lengths, True, "cpp"
    )
    assert lean[-1].numel() == 0 and full[-1].shape[0] == T
    n_state = 3 if family == "lstm" else 2
    assert all(torch.equal(a, b) for a, b in zip(lean[:n_state], full[:n_state]))


# Every tensor argument of every entry point, given in a wrong shape, dtype, device or layout,
# must raise a RuntimeError: the kernels index all buffers with sizes taken from one tensor
# (x_proj forward, the saved gates backward), so an unchecked size is an out-of-bounds access
# (e.g. lstm_backward without projection read past dh when h0 had fewer than H columns).
T_, B_, H_, P_ = 3, 2, 5, 3


def _lstm_fwd(proj):
    P = P_ if proj else H_
    return (
        "lstm_forward",
        [
            torch.randn(T_, B_, 4 * H_),
            torch.randn(4 * H_, P),
            torch.randn(P, H_) if proj else None,
            torch.randn(B_, P),
            torch.randn(B_, H_),
            torch.tensor([3, 2]),
            False,
            True,
        ],
        {0: {0}},
    )


def _lstm_bwd(proj):
    P = P_ if proj else H_
    return (
        "lstm_backward",
        [
            torch.randn(T_, B_, P),
            torch.randn(B_, P),
            torch.randn(B_, H_),
            torch.randn(4 * H_, P),
            torch.randn(P, H_) if proj else None,
            torch.randn(B_, H_),
            torch.rand(T_, B_, 4 * H_),
            torch.randn(T_, B_, H_),
            torch.tensor([3, 2]),
            False,
        ],
        {},
    )


def _gru_fwd():
    return (
        "gru_forward",
        [
            torch.randn(T_, B_, 3 * H_),
            torch.randn(3 * H_, H_),
            torch.randn(H_),
            torch.randn(B_, H_),
            torch.tensor([3, 2]),
            False,
            True,
        ],
        {0: {0}},
    )


def _gru_bwd():
    return (
        "gru_backward",
        [
            torch.randn(T_, B_, H_),
            torch.randn(B_, H_),
            torch.randn(3 * H_, H_),
            torch.randn(T_, B_, H_),
            torch.rand(T_, B_, 4 * H_),
            torch.tensor([3, 2]),
            False,
        ],
        {},
    )


def _rnn_fwd():
    return (
        "rnn_forward",
        [torch.randn(T_, B_, H_), torch.randn(H_, H_), torch.randn(B_, H_), torch.tensor([3, 2]), False, "tanh"],
        {0: {0}},
    )


def _rnn_bwd():
    return (
        "rnn_backward",
        [
            torch.randn(T_, B_, H_),
            torch.randn(B_, H_),
            torch.randn(H_, H_),
            torch.rand(T_, B_, H_).tanh(),
            torch.tensor([3, 2]),
            False,
            "tanh",
        ],
        {},
    )


ENTRIES = [
    ("lstm_fwd", _lstm_fwd(False)),
    ("lstm_fwd_proj", _lstm_fwd(True)),
    ("lstm_bwd", _lstm_bwd(False)),
    ("lstm_bwd_proj", _lstm_bwd(True)),
    ("gru_fwd", _gru_fwd()),
    ("gru_bwd", _gru_bwd()),
    ("rnn_fwd", _rnn_fwd()),
    ("rnn_bwd", _rnn_bwd()),
]


def _wrong_versions(t, free_dims):
    """(label, tensor) for every way t can be wrong; free_dims: dims whose size defines T."""
    if t.dtype == torch.long:  # lengths
        yield "int32", t.int()
        yield "above T", torch.tensor([T_ + 1, 2])
        yield "negative", torch.tensor([3, -1])
        yield "2-D", t.unsqueeze(0)
        yield "short", t[:1]
        yield "meta", t.to("meta")
        return
    for d in range(t.dim()):
        if d in free_dims:
            continue
        for delta in (-1, 1):
            shape = list(t.shape)
            shape[d] += delta
            yield f"size({d}){delta:+d}", torch.randn(shape)
    yield "one dim fewer", t[0] if t.dim() > 1 else t.sum()
    yield "one dim more", t.unsqueeze(0)
    yield "float64", t.double()
    yield "meta", t.to("meta")
    yield "sparse", t.to_sparse()


@pytest.mark.parametrize("eid,entry", ENTRIES, ids=[e[0] for e in ENTRIES])
def test_every_wrong_argument_raises(eid, entry):
    from fastrnn import _C

    name, args, free = entry
    fn = getattr(_C, name)
    fn(*args)  # the unmodified arguments are valid
    tried = 0
    for i, a in enumerate(args):
        if not isinstance(a, torch.Tensor):
            continue
        for _label, bad in _wrong_versions(a, free.get(i, set())):
            wrong = list(args)
            wrong[i] = bad
            with pytest.raises(RuntimeError, match=r"fastrnn cpp backend|Expected sequence length"):
                fn(*wrong)
            tried += 1
    assert tried >= 30


@pytest.mark.parametrize("delta", [-2, -1, 1, 2])
def test_lstm_backward_state_width_must_match_without_projection(delta):
    """h0/dh_n/dy of width P != H without w_hr: consistent with each other, but the kernel's dh
    rows are H long (was a heap overflow for P < H, wrong numbers for P > H)."""
    from fastrnn import _C

    T, B, H = 4, 3, 6
    P = H + delta
    with pytest.raises(RuntimeError, match="must have shape"):
        _C.lstm_backward(
            torch.randn(T, B, P),
            torch.randn(B, P),
            torch.randn(B, H),
            torch.randn(4 * H, P),
            None,
            torch.randn(B, H),
            torch.rand(T, B, 4 * H),
            torch.randn(T, B, H),
            None,
            False,
        )
