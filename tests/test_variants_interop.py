"""PeepholeLSTM, LayerNormLSTM and their cells (fastrnn.variants) inside torch.jit.trace,
torch.jit.script and torch.onnx.export (both exporters, run in ONNX Runtime), each compared
with the eager module on the backend under test at the float32 bound, for other sequence
lengths and batch sizes than the recorded ones. The variants have no torch.nn twin: the
recorded models run the loops of fastrnn._script (TorchScript; with the TorchScript ONNX
exporter PeepholeLSTM is ONNX's LSTM operator with peepholes; with the dynamo exporter the
loops are ONNX Scans)."""

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
from recording import BOUND, assert_close, ort_outputs, reload, trace

pytestmark = pytest.mark.skipif(
    DEVICE.type != "cpu", reason="torch's tracing, scripting and ONNX export are compared on CPU"
)

I, H = 5, 7
LAYERS = [  # (id, class, kwargs)
    ("peephole", fastrnn.PeepholeLSTM, {}),
    ("peephole_bi2_bf", fastrnn.PeepholeLSTM, {"num_layers": 2, "bidirectional": True, "batch_first": True}),
    ("peephole_nobias", fastrnn.PeepholeLSTM, {"bias": False}),
    ("peephole_proj", fastrnn.PeepholeLSTM, {"proj_size": 3, "num_layers": 2}),
    ("layernorm", fastrnn.LayerNormLSTM, {}),
    ("layernorm_bi2_bf", fastrnn.LayerNormLSTM, {"num_layers": 2, "bidirectional": True, "batch_first": True}),
    ("layernorm_nobias_eps", fastrnn.LayerNormLSTM, {"bias": False, "eps": 1e-3}),
]
CELLS = [
    ("peephole_cell", fastrnn.PeepholeLSTMCell, {}),
    ("peephole_cell_nobias", fastrnn.PeepholeLSTMCell, {"bias": False}),
    ("layernorm_cell", fastrnn.LayerNormLSTMCell, {}),
    ("layernorm_cell_nobias", fastrnn.LayerNormLSTMCell, {"bias": False}),
]
SIZES = [(4, 3), (9, 5), (1, 1)]  # (T, B): the recorded one, longer and wider, shorter and narrower


def make(cls, kw):
    m = cls(I, H, **kw)
    with torch.no_grad():  # LayerNorm gains and shifts start at 1 and 0: move them off
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def layer_input(m, T, B):
    return torch.randn(*((B, T) if m.batch_first else (T, B)), I)


def layer_state(m, B):
    D = 2 if m.bidirectional else 1
    P = m.proj_size if getattr(m, "proj_size", 0) > 0 else H
    return torch.randn(m.num_layers * D, B, P), torch.randn(m.num_layers * D, B, H)


def loops(graph) -> int:
    return sum(1 for n in graph.nodes() if n.kind() == "prim::Loop") + sum(
        loops(b) for n in graph.nodes() for b in n.blocks()
    )


# ------------------------------------------------------------------------------------------
# 1. torch.jit.trace
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_state,grad", [(False, False), (True, True)], ids=["zeros", "hx_grad"])
@pytest.mark.parametrize("cid,cls,kw", LAYERS, ids=[c[0] for c in LAYERS])
def test_trace_layer_any_length_and_batch(cid, cls, kw, with_state, grad):
    m = make(cls, kw)
    example = (layer_input(m, 4, 3),) + ((layer_state(m, 3),) if with_state else ())
    traced = trace(m, example, grad)
    D = 2 if m.bidirectional else 1
    # the time loop is recorded once per layer and direction, not unrolled
    assert loops(traced.inlined_graph) == m.num_layers * D
    for T, B in SIZES:
        args = (layer_input(m, T, B),) + ((layer_state(m, B),) if with_state else ())
        with torch.no_grad():
            assert_close(traced(*args), m(*args), f"traced T={T} B={B} vs eager")
    # each run of a new module compiles its loops again: the saved one is run once
    with torch.no_grad():
        assert_close(reload(traced)(*args), m(*args), f"saved+loaded T={T} B={B} vs eager")


@pytest.mark.parametrize("cls", [fastrnn.PeepholeLSTM, fastrnn.LayerNormLSTM])
def test_trace_unbatched(cls):
    m = make(cls, {"bidirectional": True})
    traced = trace(m, (torch.randn(4, I),), grad=False)
    for T in (4, 9):
        x = torch.randn(T, I)
        with torch.no_grad():
            assert_close(traced(x), m(x), f"unbatched T={T}")


@pytest.mark.parametrize("cls", [fastrnn.PeepholeLSTM, fastrnn.LayerNormLSTM])
def test_trace_gradients_reach_the_shared_parameters(cls):
    m = make(cls, {"num_layers": 2, "bidirectional": True})
    traced = trace(m, (torch.randn(4, 3, I),), grad=True)
    x = torch.randn(9, 2, I)
    up = torch.randn(9, 2, 2 * H)
    (traced(x)[0] * up).sum().backward()
    got = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    (m(x)[0] * up).sum().backward()
    for n, p in m.named_parameters():
        assert rel_rms(got[n], p.grad) <= BOUND, n


class _Packed(nn.Module):
    """A PackedSequence cannot be a traced input; packing inside the model can."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, lengths, h0=None, c0=None):
        hx = None if h0 is None else (h0, c0)
        out, (h, c) = self.rnn(pack_padded_sequence(x, lengths, enforce_sorted=False), hx)
        return pad_packed_sequence(out)[0], h, c


PACKED_LENGTHS = ([6, 2, 4], [3, 9], [1, 4, 2, 3, 4])


@pytest.mark.parametrize("cls", [fastrnn.PeepholeLSTM, fastrnn.LayerNormLSTM])
def test_trace_packed_sequence_inside_the_model(cls):
    model = _Packed(make(cls, {"bidirectional": True, "num_layers": 2}))
    traced = trace(model, (torch.randn(6, 3, I), torch.tensor([6, 2, 4])), grad=False)
    for lengths in PACKED_LENGTHS:
        x = torch.randn(max(lengths), len(lengths), I)
        with torch.no_grad():
            assert_close(traced(x, torch.tensor(lengths)), model(x, torch.tensor(lengths)), f"lengths {lengths}")


def cell_state(B):
    return torch.randn(B, H), torch.randn(B, H)


@pytest.mark.parametrize("cid,cls,kw", CELLS, ids=[c[0] for c in CELLS])
def test_trace_cell_any_batch(cid, cls, kw):
    m = make(cls, kw)
    traced = trace(m, (torch.randn(3, I), cell_state(3)), grad=True)
    traced0 = trace(m, (torch.randn(3, I),), grad=False)
    loaded = reload(traced)
    for B in (3, 1, 8):
        x, hx = torch.randn(B, I), cell_state(B)
        with torch.no_grad():
            assert_close(traced(x, hx), m(x, hx), f"traced cell B={B}")
            assert_close(loaded(x, hx), m(x, hx), f"saved+loaded cell B={B}")
            assert_close(traced0(x), m(x), f"traced cell, zero state, B={B}")


def test_eager_forward_does_not_record():
    assert not interop.records_torch_nn()
    m = fastrnn.PeepholeLSTM(I, H)
    trace(m, (torch.randn(4, 3, I),), grad=False)
    assert not interop.records_torch_nn()


# ------------------------------------------------------------------------------------------
# 2. torch.jit.script
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cid,cls,kw", LAYERS, ids=[c[0] for c in LAYERS])
def test_script_layer(cid, cls, kw):
    m = make(cls, kw)
    scripted = torch.jit.script(m)
    shared = {p.data_ptr() for p in m.parameters()}
    assert {p.data_ptr() for p in scripted.parameters()} == shared  # the same Parameters, not copies
    for T, B in SIZES:
        for args in [(layer_input(m, T, B),), (layer_input(m, T, B), layer_state(m, B))]:
            with torch.no_grad():
                assert_close(scripted(*args), m(*args), f"scripted T={T} B={B}")
    with torch.no_grad():
        assert_close(reload(scripted)(*args), m(*args), f"scripted, saved and loaded T={T} B={B}")
    x = torch.randn(5, I)  # unbatched
    with torch.no_grad():
        assert_close(scripted(x), m(x), "scripted, unbatched")


def test_script_gradients_reach_the_shared_parameters():
    m = make(fastrnn.LayerNormLSTM, {"num_layers": 2, "bidirectional": True})
    scripted = torch.jit.script(m)
    x = torch.randn(6, 2, I)
    up = torch.randn(6, 2, 2 * H)
    (scripted(x)[0] * up).sum().backward()
    got = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    (m(x)[0] * up).sum().backward()
    for n, p in m.named_parameters():
        assert rel_rms(got[n], p.grad) <= BOUND, n


@pytest.mark.parametrize("cid,cls,kw", CELLS, ids=[c[0] for c in CELLS])
def test_script_cell(cid, cls, kw):
    m = make(cls, kw)
    scripted = torch.jit.script(m)
    loaded = reload(scripted)
    for B in (4, 1):
        x, hx = torch.randn(B, I), cell_state(B)
        with torch.no_grad():
            assert_close(scripted(x, hx), m(x, hx), f"scripted cell B={B}")
            assert_close(loaded(x), m(x), f"scripted cell, saved and loaded, zero state, B={B}")
    x, hx = torch.randn(I), (torch.randn(H), torch.randn(H))
    with torch.no_grad():
        assert_close(scripted(x, hx), m(x, hx), "scripted cell, unbatched")


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.peephole = fastrnn.PeepholeLSTM(I, H, batch_first=True)
        self.layernorm = fastrnn.LayerNormLSTM(H, H, bidirectional=True, batch_first=True)
        self.cell = fastrnn.LayerNormLSTMCell(2 * H, H)

    def forward(self, x):
        y, _ = self.peephole(x)
        y, (h, c) = self.layernorm(y)
        return y, self.cell(y[:, -1]), h, c


def test_script_model_with_variant_submodules():
    model = _Model()
    x = torch.randn(3, 6, I)
    with torch.no_grad():
        want = model(x)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        assert_close(scripted(x), want, "scripted model")
        # TorchScript's protocol put the scriptable modules into the eager model: same function
        assert_close(model(x), want, "eager model after scripting")
        x = torch.randn(1, 10, I)
        assert_close(reload(scripted)(x), model(x), "scripted model, saved and loaded, T=10 B=1")


# ------------------------------------------------------------------------------------------
# 3. ONNX export, run in ONNX Runtime
# ------------------------------------------------------------------------------------------
_ONNX_MISSING = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
needs_onnx = pytest.mark.skipif(
    bool(_ONNX_MISSING), reason=f"not installed: {', '.join(_ONNX_MISSING)} (requirements.txt pins them)"
)
ONNX_LAYERS = [c for c in LAYERS if "proj" not in c[0]]
OPSET = 17  # LayerNormalization


def onnx_export(module, args, **kw):
    """Export with the TorchScript exporter; returns (ONNX Runtime session, model proto)."""
    import onnx
    import onnxruntime

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buf, dynamo=False, opset_version=OPSET, **kw)
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session, proto


def op_types(proto) -> set:
    ops = set()

    def visit(graph):
        for n in graph.node:
            ops.add(n.op_type)
            for a in n.attribute:
                if a.g is not None and len(a.g.node):
                    visit(a.g)

    visit(proto.graph)
    return ops


ONNX_CASES = [(*c, True) for c in ONNX_LAYERS] + [(*c, False) for c in ONNX_LAYERS if c[0] in ("peephole", "layernorm")]


@needs_onnx
@pytest.mark.parametrize(
    "cid,cls,kw,with_state", ONNX_CASES, ids=[f"{c[0]}-{'hx' if c[3] else 'zeros'}" for c in ONNX_CASES]
)
def test_onnx_layer_any_length_and_batch(cid, cls, kw, with_state):
    m = make(cls, kw).eval()
    t, b = (1, 0) if m.batch_first else (0, 1)
    names = ["x", "h0", "c0"] if with_state else ["x"]
    axes = {"x": {t: "T", b: "B"}, "h0": {1: "B"}, "c0": {1: "B"}}
    args = (layer_input(m, 4, 3),) + ((layer_state(m, 3),) if with_state else ())
    session, proto = onnx_export(m, args, input_names=names, dynamic_axes={k: axes[k] for k in names})
    ops = op_types(proto)
    if cls is fastrnn.PeepholeLSTM:
        assert "LSTM" in ops and "Loop" not in ops, ops
    else:
        assert {"Loop", "LayerNormalization"} <= ops and "LSTM" not in ops, ops
    for T, B in SIZES:
        args = (layer_input(m, T, B),) + ((layer_state(m, B),) if with_state else ())
        with torch.no_grad():
            assert_close(ort_outputs(session, args), m(*args), f"onnxruntime T={T} B={B} vs eager")


@needs_onnx
@pytest.mark.parametrize("cls", [fastrnn.PeepholeLSTM, fastrnn.LayerNormLSTM])
def test_onnx_packed_sequence_inside_the_model(cls):
    # ONNX's LSTM takes the lengths as sequence_lens; the Loop masks the inactive steps.
    # The states given in the caller's batch order are permuted to the packed order and back.
    model = _Packed(make(cls, {"bidirectional": True, "num_layers": 2})).eval()
    session, _ = onnx_export(
        model,
        (torch.randn(6, 3, I), torch.tensor([6, 2, 4]), *layer_state(model.rnn, 3)),
        input_names=["x", "lengths", "h0", "c0"],
        dynamic_axes={"x": {0: "T", 1: "B"}, "lengths": {0: "B"}, "h0": {1: "B"}, "c0": {1: "B"}},
    )
    for lengths in PACKED_LENGTHS:
        args = (
            torch.randn(max(lengths), len(lengths), I),
            torch.tensor(lengths),
            *layer_state(model.rnn, len(lengths)),
        )
        with torch.no_grad():
            assert_close(ort_outputs(session, args), model(*args), f"onnxruntime lengths {lengths}")


@needs_onnx
@pytest.mark.parametrize("cid,cls,kw", CELLS, ids=[c[0] for c in CELLS])
def test_onnx_cell_any_batch(cid, cls, kw):
    m = make(cls, kw)
    session, _ = onnx_export(
        m,
        (torch.randn(3, I), cell_state(3)),
        input_names=["x", "h0", "c0"],
        dynamic_axes={"x": {0: "B"}, "h0": {0: "B"}, "c0": {0: "B"}},
    )
    for B in (3, 1, 8):
        x, hx = torch.randn(B, I), cell_state(B)
        with torch.no_grad():
            assert_close(ort_outputs(session, (x, hx)), m(x, hx), f"onnxruntime cell B={B}")


@needs_onnx
def test_onnx_peephole_proj_size_is_a_clear_error():
    m = fastrnn.PeepholeLSTM(I, H, proj_size=3).eval()
    with pytest.raises(ValueError, match="proj_size > 0 cannot be exported with the TorchScript ONNX exporter"):
        onnx_export(m, (torch.randn(4, 3, I),))
    assert not interop.records_torch_nn()


needs_onnxscript = pytest.mark.skipif(
    importlib.util.find_spec("onnxscript") is None, reason="not installed: onnxscript (requirements.txt pins it)"
)
DYNAMO_LAYERS = [c for c in LAYERS if c[0] in ("peephole_proj", "layernorm_bi2_bf")]
DYNAMO_CELLS = [c for c in CELLS if c[0] == "peephole_cell"]


def dynamo_export(module, args, dynamic_shapes):
    """Export with the dynamo exporter; returns the ONNX Runtime session and the op types."""
    import onnxruntime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False)
    proto = prog.model_proto
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session, op_types(proto)


@needs_onnx
@needs_onnxscript
@pytest.mark.parametrize("cid,cls,kw", DYNAMO_LAYERS, ids=[c[0] for c in DYNAMO_LAYERS])
def test_onnx_dynamo_layer_any_length_and_batch(cid, cls, kw):
    # the loop is torch's scan, written as an ONNX Scan; projection included
    m = make(cls, kw).eval()
    T, B = torch.export.Dim("T"), torch.export.Dim("B")
    # the example's B differs from every other size of the model: torch.export would tie
    # B to an equal static size and specialise it
    args = (layer_input(m, 8, 6), layer_state(m, 6))
    x_dims = {0: B, 1: T} if m.batch_first else {0: T, 1: B}
    session, ops = dynamo_export(m, args, (x_dims, ({1: B}, {1: B})))
    assert "Scan" in ops and "Loop" not in ops, ops
    for t, b in SIZES:
        args = (layer_input(m, t, b), layer_state(m, b))
        with torch.no_grad():
            assert_close(ort_outputs(session, args), m(*args), f"onnxruntime (dynamo) T={t} B={b} vs eager")
    assert not interop.records_torch_nn()


@needs_onnx
@needs_onnxscript
@pytest.mark.parametrize("cid,cls,kw", DYNAMO_CELLS, ids=[c[0] for c in DYNAMO_CELLS])
def test_onnx_dynamo_cell_any_batch(cid, cls, kw):
    m = make(cls, kw)
    B = torch.export.Dim("B")
    session, _ = dynamo_export(m, (torch.randn(6, I), cell_state(6)), ({0: B}, ({0: B}, {0: B})))
    for b in (6, 1, 9):
        x, hx = torch.randn(b, I), cell_state(b)
        with torch.no_grad():
            assert_close(ort_outputs(session, (x, hx)), m(x, hx), f"onnxruntime (dynamo) cell B={b}")


def test_convert_brings_a_scripted_variant_back_and_weights_only_load():
    """After torch.jit.script of a parent, its eager copy holds the scriptable module (as
    TorchScript's protocol has it); fastrnn.convert puts the variant back. A pickled model
    with variants loads with weights_only=True under fastrnn.safe_globals()."""
    model = _Parent()
    originals = list(model.children())
    torch.jit.script(model)
    fastrnn.convert(model, backend="reference")
    assert list(model.children()) == originals and all(m.backend == "reference" for m in originals)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    with torch.serialization.safe_globals([*fastrnn.safe_globals(), _Parent]):
        loaded = torch.load(buf, weights_only=True)
    x = torch.randn(5, 2, 3)
    assert torch.equal(loaded(x), model(x))


class _Parent(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = fastrnn.LayerNormLSTM(3, 4)
        self.cell = fastrnn.PeepholeLSTMCell(3, 4)

    def forward(self, x):
        out, _ = self.layer(x)
        return out + self.cell(x[0])[0]
