"""fastrnn inside torch's other tools, each compared with torch.nn doing the same:
torch.jit.trace, torch.jit.script, torch.onnx.export (both exporters, run in ONNX Runtime),
torch.ao.quantization.quantize_dynamic and torch.load(weights_only=True)."""

import copy
import importlib.util
import io
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastrnn
from conftest import DEVICE
from fastrnn import interop
from fastrnn.testing import rel_rms
from helpers import make_pair, make_state
from recording import BOUND, assert_close, flat, ort_outputs, reload, trace

pytestmark = pytest.mark.skipif(
    DEVICE.type != "cpu", reason="torch's tracing, scripting, ONNX and quantization are compared on CPU"
)

LAYERS = [  # (id, family, kwargs)
    ("lstm", "lstm", {}),
    ("lstm_bi2_bf", "lstm", {"num_layers": 2, "bidirectional": True, "batch_first": True}),
    ("lstm_proj", "lstm", {"proj_size": 3}),
    ("gru", "gru", {}),
    ("gru_bi2", "gru", {"num_layers": 2, "bidirectional": True}),
    ("rnn_tanh", "rnn", {"nonlinearity": "tanh"}),
    ("rnn_relu_bf", "rnn", {"nonlinearity": "relu", "batch_first": True}),
]
CELLS = [  # (id, fastrnn class, torch.nn class, kwargs)
    ("lstm_cell", fastrnn.LSTMCell, nn.LSTMCell, {}),
    ("gru_cell", fastrnn.GRUCell, nn.GRUCell, {}),
    ("rnn_cell_tanh", fastrnn.RNNCell, nn.RNNCell, {}),
    ("rnn_cell_relu", fastrnn.RNNCell, nn.RNNCell, {"nonlinearity": "relu"}),
]
I, H = 5, 7


def cell_pair(ours_cls, nn_cls, kw):
    ours = ours_cls(I, H, **kw)
    theirs = nn_cls(I, H, **kw)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def layer_input(module, T, B):
    return torch.randn(*((B, T) if module.batch_first else (T, B)), I)


# ------------------------------------------------------------------------------------------
# 1. torch.jit.trace
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zeros", "hx"])
@pytest.mark.parametrize("cid,family,kw", LAYERS, ids=[c[0] for c in LAYERS])
def test_trace_layer_any_length_and_batch(cid, family, kw, with_state, grad):
    ours, theirs = make_pair(family, I, H, torch.float32, device="cpu", **kw)
    example = (layer_input(ours, 4, 3),) + ((make_state(family, ours, 3, torch.float32, "cpu"),) if with_state else ())
    traced = trace(ours, example, grad)
    nodes = {n.kind() for n in traced.inlined_graph.nodes()}
    assert f"aten::{ {'lstm': 'lstm', 'gru': 'gru', 'rnn': 'rnn_' + kw.get('nonlinearity', 'tanh')}[family] }" in nodes
    loaded = reload(traced)
    for T, B in [(4, 3), (11, 2), (1, 1), (2, 6)]:  # longer and shorter than the example
        args = (layer_input(ours, T, B),) + ((make_state(family, ours, B, torch.float32, "cpu"),) if with_state else ())
        with torch.no_grad():
            want = theirs(*args)
            assert_close(traced(*args), want, f"traced T={T} B={B} vs torch.nn")
            assert_close(loaded(*args), want, f"saved+loaded T={T} B={B} vs torch.nn")
            assert_close(ours(*args), want, f"fastrnn eager T={T} B={B} vs torch.nn")


def test_trace_gradients_reach_the_shared_parameters():
    ours, theirs = make_pair("lstm", I, H, torch.float32, device="cpu", num_layers=2, bidirectional=True)
    traced = trace(ours, (torch.randn(4, 3, I),), grad=True)
    x = torch.randn(9, 2, I)
    up = torch.randn(9, 2, 2 * H)
    (traced(x)[0] * up).sum().backward()
    (theirs(x)[0] * up).sum().backward()
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert rel_rms(a.grad, b.grad) <= BOUND, name


class _Packed(nn.Module):
    """A PackedSequence cannot be a traced input (torch.nn's nor fastrnn's); packing inside can."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, lengths):
        out, h = self.rnn(pack_padded_sequence(x, lengths, enforce_sorted=False))
        return pad_packed_sequence(out)[0], h


@pytest.mark.parametrize("family", ["lstm", "gru", "rnn"])
def test_trace_packed_sequence_inside_the_model(family):
    ours, theirs = make_pair(family, I, H, torch.float32, device="cpu", bidirectional=True)
    traced = trace(_Packed(ours), (torch.randn(6, 3, I), torch.tensor([6, 2, 4])), grad=False)
    for lengths in ([6, 2, 4], [3, 9], [1, 4, 2, 3, 4]):
        x = torch.randn(max(lengths), len(lengths), I)
        with torch.no_grad():
            assert_close(
                traced(x, torch.tensor(lengths)), _Packed(theirs)(x, torch.tensor(lengths)), f"lengths {lengths}"
            )


@pytest.mark.parametrize("cid,ours_cls,nn_cls,kw", CELLS, ids=[c[0] for c in CELLS])
def test_trace_cell_any_batch(cid, ours_cls, nn_cls, kw):
    ours, theirs = cell_pair(ours_cls, nn_cls, kw)
    is_lstm = nn_cls is nn.LSTMCell

    def state(B):
        return (torch.randn(B, H), torch.randn(B, H)) if is_lstm else torch.randn(B, H)

    traced = trace(ours, (torch.randn(3, I), state(3)), grad=True)
    traced0 = trace(ours, (torch.randn(3, I),), grad=False)
    loaded = reload(traced)
    for B in (3, 1, 8):
        x, hx = torch.randn(B, I), state(B)
        with torch.no_grad():
            assert_close(traced(x, hx), theirs(x, hx), f"traced cell B={B}")
            assert_close(loaded(x, hx), theirs(x, hx), f"saved+loaded cell B={B}")
            assert_close(traced0(x), theirs(x), f"traced cell, zero state, B={B}")


def test_eager_forward_does_not_record():
    assert not interop.records_torch_nn()
    # torch.export keeps fastrnn's registered ops (run by fastrnn's kernels when compiled)
    ep = torch.export.export(fastrnn.GRU(I, H), (torch.randn(4, 3, I),))
    targets = {str(n.target) for n in ep.graph.nodes}
    assert not any("aten.gru" in t for t in targets), targets


# ------------------------------------------------------------------------------------------
# 2. torch.jit.script
# ------------------------------------------------------------------------------------------
class _Model(nn.Module):
    def __init__(self, lstm, gru, rnn, lstm_cell, gru_cell, rnn_cell):
        super().__init__()
        self.lstm, self.gru, self.rnn = lstm, gru, rnn
        self.lstm_cell, self.gru_cell, self.rnn_cell = lstm_cell, gru_cell, rnn_cell

    def forward(self, x):
        y, (h, c) = self.lstm(x)
        y = y.transpose(0, 1)
        y, _ = self.gru(y)
        y, _ = self.rnn(y)
        hc = self.lstm_cell(y[-1])
        g = self.gru_cell(hc[0])
        return y, self.rnn_cell(g), h, c


def _model_pair():
    """A model of fastrnn modules and the same model of torch.nn modules (same weights)."""
    theirs = _Model(
        nn.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True),
        nn.GRU(2 * H, H),
        nn.RNN(H, H, nonlinearity="relu"),
        nn.LSTMCell(H, H),
        nn.GRUCell(H, H),
        nn.RNNCell(H, H),
    )
    ours = fastrnn.convert(copy.deepcopy(theirs))
    return ours, theirs


def test_script_model_with_fastrnn_submodules():
    ours, theirs = _model_pair()
    params = dict(ours.named_parameters())
    x = torch.randn(3, 6, I)
    with torch.no_grad():
        assert_close(ours(x), theirs(x), "fastrnn eager vs torch.nn")
    scripted = torch.jit.script(ours)
    loaded = reload(scripted)
    for T, B in [(6, 3), (10, 1)]:
        x = torch.randn(B, T, I)
        with torch.no_grad():
            want = theirs(x)
            assert_close(scripted(x), want, "scripted vs torch.nn")
            assert_close(loaded(x), want, "scripted, saved and loaded vs torch.nn")
    # TorchScript's protocol puts the torch.nn twins into the eager parent; they share the
    # Parameters, so the eager model computes the same function, and convert brings fastrnn back
    assert type(ours.lstm) is nn.LSTM and type(ours.rnn_cell) is nn.RNNCell
    assert all(p is params[n] for n, p in ours.named_parameters())
    fastrnn.convert(ours)
    assert type(ours.lstm) is fastrnn.LSTM and type(ours.rnn_cell) is fastrnn.RNNCell
    x = torch.randn(3, 6, I)
    with torch.no_grad():
        assert_close(ours(x), theirs(x), "eager after convert")


@pytest.mark.parametrize("cid,ours_cls,nn_cls,kw", CELLS, ids=[c[0] for c in CELLS])
def test_script_cell(cid, ours_cls, nn_cls, kw):
    ours, theirs = cell_pair(ours_cls, nn_cls, kw)
    scripted = torch.jit.script(ours)
    assert scripted.weight_hh.data_ptr() == ours.weight_hh.data_ptr()  # shared, not copied
    x = torch.randn(4, I)
    with torch.no_grad():
        assert_close(scripted(x), theirs(x), "scripted cell")
        assert_close(reload(scripted)(x), theirs(x), "scripted cell, saved and loaded")


@pytest.mark.parametrize("family", ["lstm", "gru", "rnn"])
def test_script_layer_at_top_level_as_torch_nn(family):
    ours, theirs = make_pair(family, I, H, torch.float32, device="cpu")
    x = torch.randn(4, 3, I)
    try:  # torch 2.13 scripts nn.LSTM alone without a callable forward (its forward is overloaded)
        want = torch.jit.script(theirs)(x)
    except Exception as e:
        with pytest.raises(type(e)):
            torch.jit.script(ours)(x)
        return
    assert_close(torch.jit.script(ours)(x), want, "top-level scripted layer")


# ------------------------------------------------------------------------------------------
# 3. quantize_dynamic
# ------------------------------------------------------------------------------------------
def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    return out, [str(w.message) for w in caught if "fastrnn" in str(w.message)]


@pytest.mark.parametrize("dtype", [torch.qint8, torch.float16])
@pytest.mark.parametrize("spec", ["default", "set"])
def test_quantize_dynamic_as_torch_nn(dtype, spec):
    ours, theirs = _model_pair()
    kinds = {nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell, nn.RNNCell}
    qspec = None if spec == "default" else kinds
    want_model, _ = _quiet(torch.ao.quantization.quantize_dynamic, theirs, qspec, dtype=dtype)
    got_model, complaints = _quiet(fastrnn.quantize_dynamic, ours, qspec, dtype=dtype)
    assert not complaints, complaints
    for name in ("lstm", "gru", "lstm_cell", "gru_cell", "rnn_cell"):
        assert type(getattr(got_model, name)) is type(getattr(want_model, name)), name
        assert "quantized" in type(getattr(got_model, name)).__module__, name
    # torch has no dynamic-quantized nn.RNN: it stays float, and stays fastrnn
    assert type(got_model.rnn) is fastrnn.RNN and got_model.rnn.backend == ours.rnn.backend
    assert type(ours.lstm) is fastrnn.LSTM  # not in place
    for T, B in [(6, 3), (2, 1)]:
        x = torch.randn(B, T, I)
        with torch.no_grad():
            assert_close(got_model(x), want_model(x), f"quantized {dtype} vs quantized torch.nn")


def test_quantize_dynamic_keeps_unselected_modules_fastrnn_and_accepts_fastrnn_classes():
    ours, theirs = _model_pair()
    got, _ = _quiet(fastrnn.quantize_dynamic, ours, {fastrnn.GRU, nn.LSTMCell})
    want, _ = _quiet(torch.ao.quantization.quantize_dynamic, theirs, {nn.GRU, nn.LSTMCell})
    assert type(got.gru) is type(want.gru) and type(got.lstm_cell) is type(want.lstm_cell)
    assert type(got.lstm) is fastrnn.LSTM and type(got.gru_cell) is fastrnn.GRUCell
    x = torch.randn(3, 5, I)
    with torch.no_grad():
        assert_close(got(x), want(x), "partly quantized")


def test_torch_quantize_dynamic_warns_that_it_leaves_fastrnn_float():
    ours, theirs = _model_pair()
    got, complaints = _quiet(torch.ao.quantization.quantize_dynamic, ours, {nn.LSTM, nn.GRU})
    assert type(got.lstm) is fastrnn.LSTM  # torch matches classes exactly
    assert any("fastrnn.LSTM" in c and "fastrnn.quantize_dynamic" in c for c in complaints), complaints
    assert not any("fastrnn.RNN " in c for c in complaints)  # torch would not quantize nn.RNN either


# ------------------------------------------------------------------------------------------
# 4. ONNX export, run in ONNX Runtime
# ------------------------------------------------------------------------------------------
_ONNX_MISSING = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
needs_onnx = pytest.mark.skipif(
    bool(_ONNX_MISSING), reason=f"not installed: {', '.join(_ONNX_MISSING)} (requirements.txt pins them)"
)
EXPORTERS = [pytest.param(False, id="torchscript_exporter"), pytest.param(True, id="dynamo_exporter")]
ONNX_LAYERS = [c for c in LAYERS if c[0] != "lstm_proj"]


def onnx_run(module, args, dynamo, **kw):
    """Export ``module`` on ``args`` and return (ONNX Runtime session, model proto)."""
    import onnx
    import onnxruntime

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(module, args, None if dynamo else buf, dynamo=dynamo, **kw)
    proto = prog.model_proto if dynamo else onnx.load_from_string(buf.getvalue())
    return onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]), proto


@needs_onnx
@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("with_state", [False, True], ids=["zeros", "hx"])
@pytest.mark.parametrize("cid,family,kw", ONNX_LAYERS, ids=[c[0] for c in ONNX_LAYERS])
def test_onnx_layer(cid, family, kw, with_state, dynamo):
    ours, theirs = make_pair(family, I, H, torch.float32, device="cpu", **kw)
    ours.eval(), theirs.eval()
    args = (layer_input(ours, 4, 3),) + ((make_state(family, ours, 3, torch.float32, "cpu"),) if with_state else ())
    session, proto = onnx_run(ours, args, dynamo)
    _, want_proto = onnx_run(theirs, args, dynamo)
    assert sorted(n.op_type for n in proto.graph.node) == sorted(n.op_type for n in want_proto.graph.node)
    with torch.no_grad():
        want = flat(theirs(*args))
        assert_close(ort_outputs(session, args), want, "onnxruntime vs torch.nn")
        assert_close(flat(ours(*args)), want, "fastrnn eager vs torch.nn")


@needs_onnx
@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("cid,ours_cls,nn_cls,kw", CELLS, ids=[c[0] for c in CELLS])
def test_onnx_cell(cid, ours_cls, nn_cls, kw, dynamo):
    ours, theirs = cell_pair(ours_cls, nn_cls, kw)
    is_lstm = nn_cls is nn.LSTMCell
    args = (torch.randn(3, I), (torch.randn(3, H), torch.randn(3, H)) if is_lstm else torch.randn(3, H))
    session, _ = onnx_run(ours, args, dynamo)
    with torch.no_grad():
        assert_close(ort_outputs(session, args), flat(theirs(*args)), "onnxruntime cell vs torch.nn")


@needs_onnx
def test_onnx_dynamic_axes_any_length_and_batch():
    # the TorchScript exporter with dynamic axes: one model for every T and B, as torch.nn
    ours, theirs = make_pair("lstm", I, H, torch.float32, device="cpu", num_layers=2, bidirectional=True)
    session, _ = onnx_run(ours, (torch.randn(4, 3, I),), False, input_names=["x"], dynamic_axes={"x": {0: "T", 1: "B"}})
    for T, B in [(4, 3), (13, 2), (1, 5)]:
        x = torch.randn(T, B, I)
        with torch.no_grad():
            assert_close(ort_outputs(session, (x,)), flat(theirs(x)), f"onnxruntime T={T} B={B}")


@needs_onnx
@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_onnx_lstm_proj_size_is_a_clear_error(dynamo):
    # ONNX's LSTM has no projection; torch.nn fails too (dynamo=True even writes a model
    # that ONNX Runtime rejects at run time)
    ours = fastrnn.LSTM(I, H, proj_size=3).eval()
    with pytest.raises(Exception, match="proj_size > 0 cannot be exported to ONNX"):
        onnx_run(ours, (torch.randn(4, 3, I),), dynamo)
    assert not interop.records_torch_nn()


# ------------------------------------------------------------------------------------------
# 5. torch.load(weights_only=True)
# ------------------------------------------------------------------------------------------
def test_load_whole_model_weights_only():
    model = nn.Sequential(
        fastrnn.LSTM(I, H, num_layers=2, proj_size=3),
        fastrnn.GRU(I, H),
        fastrnn.RNN(I, H, nonlinearity="relu"),
        fastrnn.LSTMCell(I, H),
        fastrnn.GRUCell(I, H),
        fastrnn.RNNCell(I, H, backend="reference"),
    )
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    with pytest.raises(Exception, match=r"fastrnn\.modules"), torch.serialization.safe_globals([nn.Sequential]):
        torch.load(buf, weights_only=True)
    buf.seek(0)
    with torch.serialization.safe_globals([*fastrnn.safe_globals(), nn.Sequential]):
        loaded = torch.load(buf, weights_only=True)
    for a, b in zip(model, loaded):
        assert type(a) is type(b) and a.backend == b.backend
        x = torch.randn(4, 3, I) if not isinstance(a, nn.RNNCellBase) else torch.randn(3, I)
        with torch.no_grad():
            assert_close(b(x), a(x), type(a).__name__)
