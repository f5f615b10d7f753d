"""Builders shared by the test modules."""

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from conftest import DEVICE
from fastrnn.convert import TWINS
from fastrnn.modules import LAYERS

# family -> (fastrnn layer, torch.nn twin), for every cell of fastrnn.cells
TWIN = {name: (layer, next(c for c, t in TWINS.items() if t is layer)) for name, layer in LAYERS.items()}


def _configs(cell):
    """(id, family, constructor kwargs): each value of each non-tensor argument, and the
    projection where the cell has one."""
    if cell.attrs:
        out = [(f"{cell.name}_{v}", cell.name, {a: v}) for a, _, allowed in cell.attrs for v in allowed]
    else:
        out = [(cell.name, cell.name, {})]
    if any(p.when == "proj" for p in cell.params):
        out.append((f"{cell.name}_proj", cell.name, {"proj_size": 4}))
    return out


# (id, family, constructor kwargs) of the cells with a torch.nn twin (the variants of
# fastrnn.variants have their own tests, tests/test_variants.py)
CELLS = [c for cell in fastrnn.cells.TORCH_NN for c in _configs(cell)]


def make_pair(family, input_size, hidden, dtype, device=DEVICE, **kw):
    """A fastrnn module (default backend: from FASTRNN_BACKEND) and its torch.nn twin."""
    ours_cls, nn_cls = TWIN[family]
    ours = ours_cls(input_size, hidden, **kw).to(device=device, dtype=dtype)
    theirs = nn_cls(input_size, hidden, **kw).to(device=device, dtype=dtype)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def make_state(family, module, batch, dtype, device=DEVICE, unbatched=False):
    D = 2 if module.bidirectional else 1
    P = module.proj_size if getattr(module, "proj_size", 0) else module.hidden_size
    shape = (module.num_layers * D,) + (() if unbatched else (batch,))
    h = torch.randn(*shape, P, dtype=dtype, device=device)
    if family != "lstm":
        return h
    return h, torch.randn(*shape, module.hidden_size, dtype=dtype, device=device)


def make_inputs(kind, family, module, T, B, I, dtype, device=DEVICE, lengths=None):
    """(input, hx) for one of the input kinds: padded, packed (unsorted), unbatched."""
    bf = module.batch_first
    if kind == "unbatched":
        return torch.randn(T, I, dtype=dtype, device=device), make_state(family, module, B, dtype, device, True)
    x = torch.randn(*((B, T) if bf else (T, B)), I, dtype=dtype, device=device)
    hx = make_state(family, module, B, dtype, device)
    if kind == "padded":
        return x, hx
    lengths = lengths if lengths is not None else torch.randint(1, T + 1, (B,))
    lengths[torch.randint(0, B, ())] = T  # one full-length sequence
    return pack_padded_sequence(x, lengths, batch_first=bf, enforce_sorted=False), hx
