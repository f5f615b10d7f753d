"""pytest-benchmark suite: fastrnn and its peers side by side, one group per config.

    pytest bench --benchmark-only --benchmark-json out.json

Not part of ``make test``. Configs are the quick sweep of ``python -m bench``.
"""

import pytest
import torch

from bench.configs import configs
from bench.providers import providers
from bench.runner import _workload

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = [
    (cfg, prov)
    for cfg in configs(DEVICE.type, ["lstm", "gru", "rnn"], ["fwd", "fwdbwd"], quick=True)
    for prov in providers(cfg.cell, DEVICE)
]


@pytest.mark.parametrize("cfg,provider", CASES, ids=[f"{c.cell}-{c.mode}-T{c.T}-B{c.B}-H{c.H}-{p}" for c, p in CASES])
def test_recurrence(benchmark, cfg, provider):
    benchmark.group = cfg.label()
    benchmark.extra_info.update(cfg.asdict(), provider=provider, tokens=cfg.T * cfg.B)
    fn = _workload(cfg, provider, DEVICE)
    if DEVICE.type == "cuda":

        def run():
            fn()
            torch.cuda.synchronize()
    else:
        run = fn
    benchmark(run)
