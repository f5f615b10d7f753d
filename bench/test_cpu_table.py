"""``python -m bench.cpu_table`` in its quickest form: the table's JSON has its header facts
and, per row, positive finite times and ratios; one memory measurement runs in its fresh
process. Structure only, no timing assertion (this 2-core machine is shared).

    pytest bench/test_cpu_table.py --benchmark-disable
"""

import json
import math

import torch

from bench import cpu_table

ROWS = ["LSTM (100,1,32,64) fwd+bwd", "RNN (100,8,64,128) fwd+bwd", "LSTMCell x50 (B=1,I=64,H=64) fwd+bwd"]
ROW_KEYS = {
    "name", "kind", "cell", "T", "B", "input", "hidden", "layers", "bidirectional", "dtype", "mode", "packed",
    "goal", "torch_nn_s", "fastrnn_s", "speedup", "speedup_min", "speedup_max", "rounds", "one_call_per_round",
    "torch_nn_rounds_s", "fastrnn_rounds_s", "macs", "floor_s", "bound", "fastrnn_rate_of_best", "profile",
}  # fmt: skip


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_quick_table_json(tmp_path):
    out = tmp_path / "cpu_table.json"
    # one thread: at two, a busy second core slows OpenMP regions a hundredfold
    assert cpu_table.main(["--quick", "--profile", "--threads", "1", "--rows", *ROWS, "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert set(d) == {"header", "rows", "memory"}
    h = d["header"]
    for key in ("device", "cpu_model", "torch", "backend", "commit", "date"):
        assert isinstance(h[key], str), key
        assert h[key], key
    assert h["threads"] == 1
    assert h["quick"] is True
    assert h["rows_filter"] == ROWS
    for key in ("sgemm_1thread_s", "sgemm_2thread_s", "sgemm_2thread_scaling"):
        assert _positive(h[key]), key
    assert {"mm_fp32", "mm_fp64"} <= set(h["gemm_rates"])
    assert all(_positive(v) for v in h["gemm_rates"].values())
    assert [(c["B"], c["input"], c["hidden"]) for c in h["thread_bitwise"]] == cpu_table.BITWISE_CONFIGS[:1]
    assert all(isinstance(c["bitwise_equal"], bool) for c in h["thread_bitwise"])
    assert [r["name"] for r in d["rows"]] == ROWS
    assert {r["kind"] for r in d["rows"]} == {"layer", "cell"}
    for r in d["rows"]:
        assert set(r) == ROW_KEYS, r["name"]
        for key in ("torch_nn_s", "fastrnn_s", "speedup", "speedup_min", "speedup_max", "goal"):
            assert _positive(r[key]), (r["name"], key)
        assert r["speedup_min"] <= r["speedup"] <= r["speedup_max"]
        assert len(r["torch_nn_rounds_s"]) == len(r["fastrnn_rounds_s"]) == r["rounds"] == h["rounds"]
        assert all(_positive(t) for t in r["torch_nn_rounds_s"] + r["fastrnn_rounds_s"])
        assert isinstance(r["macs"], int)
        assert r["macs"] > 0
        for key in ("floor_s", "bound", "fastrnn_rate_of_best"):
            assert _positive(r[key]), (r["name"], key)
        assert math.isclose(r["bound"], r["torch_nn_s"] / r["floor_s"])
        assert set(r["profile"]) == set(cpu_table.PROFILE_PARTS)
        assert all(v >= 0 for v in r["profile"].values())
        assert sum(r["profile"].values()) >= 1 - 1e-9  # the host part takes the rest of the wall time
    assert d["memory"] == []  # --quick leaves the memory rows out


def test_quick_skips_big_rows():
    names = {r.name for r in cpu_table.ROWS}
    assert len(names) == len(cpu_table.ROWS)  # --rows and the JSON tell rows apart by name
    assert any(r.big for r in cpu_table.ROWS)
    assert any(r.kind == "client" for r in cpu_table.ROWS)
    for r in cpu_table.ROWS:
        if r.shape[1] * r.shape[3] >= 32 * 256 and r.kind == "layer":
            assert r.big, r.name


def test_memory_row_fresh_process():
    # a large parent: the child's high-water mark must not start at the parent's (ru_maxrss
    # does, through fork and exec)
    ballast = torch.ones(100 * 2**20)  # 400 MB, touched
    r = cpu_table.memory_row("tiny", "fwdbwd", shape=(5, 2, 8, 16), threads=1)
    del ballast
    for side in ("torch_nn", "fastrnn"):
        before, _ = r[f"{side}_maxrss_kib"]
        assert before - r[f"{side}_rss_before_kib"] < 64 * 1024, side
    for key in ("torch_nn_mb", "fastrnn_mb"):
        assert isinstance(r[key], float), key
        assert math.isfinite(r[key]), key
        assert r[key] >= 0, key
    for key in ("torch_nn_maxrss_kib", "fastrnn_maxrss_kib"):
        before, after = r[key]
        assert 0 < before <= after, key
    assert isinstance(r["ok"], bool)


def test_row_macs_count_every_product():
    """A 2-layer bidirectional LSTM's fwd+bwd, counted by hand: per direction, layer 0
    (input 64) projection, recurrence, carry, dW_hh, dW_ih; layer 1 (input 2*128) the same
    plus its input gradient."""
    row = next(r for r in cpu_table.ROWS if r.layers == 2)
    T, B, I, H = row.shape
    G = 4 * H
    per = T * B * G
    layer0 = per * (I + H) + per * (H + H + I)
    layer1 = per * (2 * H + H) + per * (H + H + 2 * H + 2 * H)
    assert cpu_table.row_macs(row) == 2 * (layer0 + layer1)
    fwd = cpu_table._layer("gru", (10, 2, 3, 5), "fwd", 1.0)
    assert cpu_table.row_macs(fwd) == 10 * 2 * 15 * (3 + 5)
