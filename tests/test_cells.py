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
