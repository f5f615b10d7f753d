"""Bad input fails as in torch.nn: same exception class and message, or a clearer one where
torch.nn's comes from deep inside ATen (or where torch.nn does not fail at all)."""

import re

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn

CLASSES = {
    "lstm": (fastrnn.LSTM, nn.LSTM),
    "gru": (fastrnn.GRU, nn.GRU),
    "rnn": (fastrnn.RNN, nn.RNN),
    "lstmcell": (fastrnn.LSTMCell, nn.LSTMCell),
    "grucell": (fastrnn.GRUCell, nn.GRUCell),
    "rnncell": (fastrnn.RNNCell, nn.RNNCell),
}

r = torch.randn


def _hx(fam, *shape_h, shape_c=None):
    return (r(*shape_h), r(*(shape_c or shape_h))) if fam.startswith("lstm") else r(*shape_h)


# (id, class key, constructor args, constructor kwargs)
CTOR_CASES = [
    ("hidden0", "lstm", (10, 0, 1), {}),
    ("layers0", "gru", (10, 10, 0), {}),
    ("input0", "rnn", (0, 10), {}),
    ("input_float", "lstm", (4.0, 8), {}),
    ("hidden_float", "gru", (4, 8.0), {}),
    ("bias_int", "lstm", (3, 5), {"bias": 0}),
    ("batch_first_int", "gru", (3, 5), {"batch_first": 1}),
    ("dropout_2", "lstm", (3, 5), {"dropout": 2}),
    ("dropout_bool", "lstm", (3, 5), {"dropout": True}),
    ("proj_ge_hidden", "lstm", (3, 5), {"proj_size": 5}),
    ("proj_negative", "lstm", (3, 5), {"proj_size": -1}),
    ("proj_on_gru", "gru", (3, 5), {"proj_size": 2}),
    ("proj_on_rnn", "rnn", (3, 5), {"proj_size": 2}),
    ("bad_nonlinearity", "rnn", (3, 5), {"nonlinearity": "sigmoid"}),
    ("bad_nonlinearity_positional", "rnn", (3, 5, 1, "gelu"), {}),
]


@pytest.mark.parametrize("cid,key,args,kwargs", CTOR_CASES, ids=[c[0] for c in CTOR_CASES])
def test_constructor_errors_match_torch(cid, key, args, kwargs):
    ours, theirs = CLASSES[key]
    with pytest.raises(Exception) as expected:  # noqa: PT011 (torch.nn's own exception type is the expectation)
        theirs(*args, **kwargs)
    with pytest.raises(expected.type, match=re.escape(str(expected.value))):
        ours(*args, **kwargs)


# (id, class key, constructor kwargs, forward arguments builder)
SAME_AS_TORCH = [
    ("rank4", "lstm", {}, lambda f: (r(2, 3, 4, 1),)),
    ("rank1", "gru", {}, lambda f: (r(4),)),
    ("rank4_rnn", "rnn", {}, lambda f: (r(2, 3, 4, 1),)),
    ("input_size", "lstm", {}, lambda f: (r(5, 3, 6),)),
    ("input_size_gru", "gru", {}, lambda f: (r(5, 3, 6),)),
    ("dtype_mismatch", "lstm", {}, lambda f: (r(5, 3, 4, dtype=torch.float64),)),
    ("dtype_int", "rnn", {}, lambda f: (torch.ones(5, 3, 4, dtype=torch.int64),)),
    ("hx_batch", "gru", {}, lambda f: (r(5, 3, 4), r(1, 2, 8))),
    ("hx_layers", "rnn", {"num_layers": 2}, lambda f: (r(5, 3, 4), r(1, 3, 8))),
    ("hx_hidden", "lstm", {}, lambda f: (r(5, 3, 4), (r(1, 3, 7), r(1, 3, 8)))),
    ("cx_hidden", "lstm", {}, lambda f: (r(5, 3, 4), (r(1, 3, 8), r(1, 3, 7)))),
    ("hx_proj", "lstm", {"proj_size": 3}, lambda f: (r(5, 3, 4), (r(1, 3, 8), r(1, 3, 8)))),
    ("hx_bidir", "gru", {"bidirectional": True}, lambda f: (r(5, 3, 4), r(1, 3, 8))),
    ("batched_hx_2d", "gru", {}, lambda f: (r(5, 3, 4), r(3, 8))),
    ("batched_hx_2d_lstm", "lstm", {}, lambda f: (r(5, 3, 4), (r(3, 8), r(3, 8)))),
    ("unbatched_hx_3d", "rnn", {}, lambda f: (r(5, 4), r(1, 1, 8))),
    ("unbatched_hx_3d_lstm", "lstm", {}, lambda f: (r(5, 4), (r(1, 1, 8), r(1, 1, 8)))),
    ("empty_sequence", "lstm", {}, lambda f: (r(0, 3, 4),)),
    ("hx_device", "gru", {}, lambda f: (r(5, 3, 4), torch.zeros(1, 3, 8, device="meta"))),
    (
        "packed_gru_hx_batch",
        "gru",
        {},
        lambda f: (pack_padded_sequence(r(5, 3, 4), torch.tensor([5, 3, 2])), r(1, 2, 8)),
    ),
    ("cell_rank3", "lstmcell", {}, lambda f: (r(2, 3, 4),)),
    ("cell_rank0", "grucell", {}, lambda f: (torch.tensor(1.0),)),
    ("cell_hx_rank4", "grucell", {}, lambda f: (r(3, 4), r(3, 1, 1, 8))),
    ("cell_hx_rank4_lstm", "lstmcell", {}, lambda f: (r(3, 4), (r(3, 1, 1, 8), r(3, 1, 1, 8)))),
    ("cell_input_size", "rnncell", {}, lambda f: (r(3, 5), r(3, 8))),
    ("cell_input_size_lstm", "lstmcell", {}, lambda f: (r(3, 11), (r(3, 8), r(3, 8)))),
    ("cell_hidden_size", "grucell", {}, lambda f: (r(3, 4), r(3, 9))),
    ("cell_hidden_size_relu", "rnncell", {"nonlinearity": "relu"}, lambda f: (r(3, 4), r(3, 9))),
    ("cell_cx_size", "lstmcell", {}, lambda f: (r(3, 4), (r(3, 8), r(3, 7)))),
    ("cell_batch", "lstmcell", {}, lambda f: (r(3, 4), (r(5, 8), r(5, 8)))),
    ("cell_batch_gru", "grucell", {}, lambda f: (r(3, 4), r(5, 8))),
    ("cell_unbatched_hx_batched", "grucell", {}, lambda f: (r(4), r(3, 8))),
    ("cell_batched_hx_unbatched", "rnncell", {}, lambda f: (r(3, 4), r(8))),
]


@pytest.mark.parametrize("cid,key,kw,build", SAME_AS_TORCH, ids=[c[0] for c in SAME_AS_TORCH])
def test_forward_errors_match_torch(cid, key, kw, build):
    ours_cls, theirs_cls = CLASSES[key]
    torch.manual_seed(0)
    theirs = theirs_cls(4, 8, **kw)
    ours = ours_cls(4, 8, **kw)
    args = build(key)
    with pytest.raises(Exception) as expected:  # noqa: PT011 (torch.nn's own exception type is the expectation)
        theirs(*args)
    with pytest.raises(expected.type, match=re.escape(str(expected.value))):
        ours(*args)


# Where torch.nn's error is an ATen internal (or absent), fastrnn says what is wrong.
CLEARER = [
    (
        "hx_dtype_lstm",
        "lstm",
        (r(5, 3, 4), (r(1, 3, 8, dtype=torch.float64), r(1, 3, 8))),
        RuntimeError,
        r"hidden state dtype \(torch.float64\) does not match input dtype \(torch.float32\)",
    ),
    (
        "hx_dtype_gru",
        "gru",
        (r(5, 3, 4), r(1, 3, 8, dtype=torch.float64)),
        RuntimeError,
        r"hidden state dtype \(torch.float64\) does not match input dtype",
    ),
    (
        "lstm_hx_three",
        "lstm",
        (r(5, 3, 4), (r(1, 3, 8),) * 3),
        RuntimeError,
        r"LSTM expects hx to be a tuple \(h_0, c_0\) of two tensors, got tuple of length 3",
    ),
    # the classes are torch.nn's (IndexError, TypeError), with a message saying what is wrong
    (
        "lstm_hx_tensor",
        "lstm",
        (r(5, 3, 4), r(1, 3, 8)),
        IndexError,
        r"LSTM expects hx to be a tuple \(h_0, c_0\) of two tensors, got Tensor",
    ),
    (
        "lstm_hx_one",
        "lstm",
        (r(5, 3, 4), (r(1, 3, 8),)),
        IndexError,
        r"LSTM expects hx to be a tuple \(h_0, c_0\) of two tensors, got tuple of length 1",
    ),
    (
        "lstm_hx_int",
        "lstm",
        (r(5, 3, 4), 0),
        TypeError,
        r"LSTM expects hx to be a tuple \(h_0, c_0\) of two tensors, got int",
    ),
    (
        "lstm_packed_float64",
        "lstm",
        (pack_padded_sequence(r(5, 3, 4, dtype=torch.float64), torch.tensor([5, 3, 2])),),
        RuntimeError,
        r"LSTM: packed input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)",
    ),
    (
        "lstmcell_hx_tensor",
        "lstmcell",
        (r(3, 4), r(3, 8)),
        TypeError,
        r"LSTMCell: hx must be a tuple \(h_0, c_0\) of two tensors, got Tensor",
    ),
    (
        "lstmcell_hx_one",
        "lstmcell",
        (r(3, 4), (r(3, 8),)),
        RuntimeError,
        r"LSTMCell expects two hidden states \(h_0, c_0\), got 1",
    ),
    # torch.nn runs this one and broadcasts the wrong-sized c0 silently
    (
        "packed_lstm_cx",
        "lstm",
        (pack_padded_sequence(r(5, 3, 4), torch.tensor([5, 3, 2])), (r(1, 3, 8), r(2, 3, 8))),
        RuntimeError,
        r"Expected hidden\[1\] size \(1, 3, 8\), got \[2, 3, 8\]",
    ),
    (
        "packed_lstm_hx",
        "lstm",
        (pack_padded_sequence(r(5, 3, 4), torch.tensor([5, 3, 2])), (r(1, 2, 8), r(1, 3, 8))),
        RuntimeError,
        r"Expected hidden\[0\] size \(1, 3, 8\), got \[1, 2, 8\]",
    ),
    (
        "cell_dtype",
        "rnncell",
        (r(3, 4, dtype=torch.float64),),
        RuntimeError,
        r"RNNCell input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)",
    ),
    (
        "cell_hx_dtype",
        "grucell",
        (r(3, 4), r(3, 8, dtype=torch.float64)),
        RuntimeError,
        r"hidden state dtype \(torch.float64\) does not match input dtype",
    ),
    # torch.nn accepts a (H, H) state for unbatched input and returns a wrong-shaped result
    (
        "cell_unbatched_square_hx",
        "grucell",
        (r(4), r(8, 8)),
        RuntimeError,
        r"GRUCell: for unbatched 1-D input, the hidden state should be 1-D, got 2-D",
    ),
]


@pytest.mark.parametrize("cid,key,args,exc,msg", CLEARER, ids=[c[0] for c in CLEARER])
def test_forward_errors_clearer_than_torch(cid, key, args, exc, msg):
    ours = CLASSES[key][0](4, 8)
    with pytest.raises(exc, match=msg):
        ours(*args)


def test_rnncell_unknown_nonlinearity_at_forward():
    ours, theirs = fastrnn.RNNCell(4, 8, nonlinearity="gelu"), nn.RNNCell(4, 8, nonlinearity="gelu")
    with pytest.raises(RuntimeError, match="Unknown nonlinearity: gelu"):
        theirs(r(3, 4))
    with pytest.raises(RuntimeError, match="Unknown nonlinearity: gelu"):
        ours(r(3, 4))


def test_bad_backend_name():
    with pytest.raises(ValueError, match="backend must be one of"):
        fastrnn.LSTM(4, 8, backend="cuda")
