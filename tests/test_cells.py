"""The cell specs (fastrnn.cells) describe torch.nn's parameters exactly, and the ops built
from them have the schemas the specs name."""

import pytest
import torch

import fastrnn
from fastrnn import cells
from helpers import CELLS, TWIN


@pytest.mark.parametrize("cid,family,kw", CELLS, ids=[c[0] for c in CELLS])
@pytest.mark.parametrize("bias", [True, False])
def test_spec_parameters_are_torch_nn_parameters(cid, family, kw, bias):
    spec = fastrnn.cells.CELLS[family]
    _, nn_cls = TWIN[family]
    I, H = 3, 6
    m = nn_cls(I, H, num_layers=2, bidirectional=True, bias=bias, **kw)
    proj = kw.get("proj_size", 0)
    expected = [
        (f"{p.name}_l{layer}{suffix}", p.shape(I if layer == 0 else 2 * (proj or H), H, proj))
        for layer in range(2)
        for suffix in ("", "_reverse")
        for p in spec.layer_params(bias, proj > 0)
    ]
    assert [(n, tuple(p.shape)) for n, p in m.named_parameters()] == expected
    assert m.mode in spec.modes


@pytest.mark.parametrize("name", list(cells.CELLS))
def test_op_schemas_follow_the_spec(name):
    spec = cells.CELLS[name]
    fwd = getattr(torch.ops.fastrnn, f"{name}_recurrence").default._schema
    bwd = getattr(torch.ops.fastrnn, f"{name}_recurrence_backward").default._schema
    assert [a.name for a in fwd.arguments] == [*spec.forward_args, "backend", "workspace"]
    assert len(fwd.returns) == len(spec.forward_results)
    assert [a.name for a in bwd.arguments] == [*spec.grad_args, "backend"]
    assert len(bwd.returns) == len(spec.grad_results)


def test_every_backend_has_every_loop():
    for backend, state in fastrnn.available_backends().items():
        if state != "available":
            continue
        mod = fastrnn.backends._load(backend)[0]
        for name in cells.CELLS:
            assert callable(getattr(mod, f"{name}_forward")) and callable(getattr(mod, f"{name}_backward"))


def test_compiled_inference_asks_for_no_workspace():
    """The workspace switch is an op argument: a compiled call under no_grad asks the op for
    no backward workspace, a compiled training call for the full one."""
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    m = fastrnn.LSTM(3, 4, num_layers=2)
    f = torch.compile(m, backend=capture, fullgraph=True)
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        lean = f(x)[0]
    full = f(x)[0]
    flags = [
        n.kwargs.get("workspace")
        for g in graphs
        for n in g.graph.nodes
        if n.op == "call_function" and "lstm_recurrence" in str(n.target)
    ]
    assert flags == [False, False, True, True]
    assert torch.equal(lean, full.detach())
