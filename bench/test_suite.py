"""``python -m bench``'s own bookkeeping: a provider that fails on one config is recorded and
the run goes on; results.json is rewritten after every measurement; and the GPU goal suite's
dry run goes through every config of its grid (tiny sizes, Triton interpreter on CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bench.__main__ as cli
from bench.configs import dry_run, gpu_goal_configs

ROOT = Path(__file__).resolve().parent.parent


def test_a_failing_provider_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    seen = []

    def fake_measure(cfg, provider, device, min_run_time, dry_run=False):
        # every measurement finds the ones before it already on disk, and the run unfinished
        data = json.loads((tmp_path / "results.json").read_text()) if seen else None
        if data is not None:
            assert data["complete"] is False
            assert len(data["rows"]) + len(data["errors"]) >= len(seen)
        seen.append((cfg, provider))
        if provider == "torch.nn" and cfg.H == seen[0][0].H:
            raise RuntimeError("a kernel that declines this size")
        return {**cfg.asdict(), "provider": provider, "median_s": 1e-3, "p20_s": 1e-3, "p80_s": 1e-3,
                "tokens_per_s": 1.0, "peak_bytes": None}  # fmt: skip

    monkeypatch.setattr(cli, "measure", fake_measure)
    monkeypatch.setattr(cli.plots, "plot", lambda *a: [])
    status = cli.main(["--device", "cpu", "--cells", "rnn", "--modes", "fwd", "--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "results.json").read_text())
    assert status == 1
    assert data["complete"] is True
    H = seen[0][0].H
    failed = [e for e in data["errors"] if e["H"] == H]
    assert failed
    assert all(e["provider"] == "torch.nn" and "declines" in e["error"] for e in failed)
    assert len(data["rows"]) + len(data["errors"]) >= len(seen) > len(failed)  # anchors may be reused
    assert any(r["H"] != H and r["provider"] == "torch.nn" for r in data["rows"])


def test_dry_run_configs_keep_the_grid_apart():
    grid = gpu_goal_configs(["lstm", "gru", "rnn", "peephole_lstm", "layernorm_lstm"], ["fwd", "fwdbwd"])
    tiny = [dry_run(c) for c in grid]
    assert len(set(tiny)) == len(set(grid))
    assert max(c.T * c.B * c.H for c in tiny) <= 3 * 3 * 16


@pytest.mark.skipif(
    os.environ.get("FASTRNN_BACKEND", "auto") not in ("auto", "cpp"), reason="runs once, in the bench lane"
)
def test_gpu_goals_dry_run_writes_every_config(tmp_path):
    """One cell and mode of the grid, end to end in a child process (the dry run sets
    TRITON_INTERPRET=1 for itself): a row per config and provider, no errors."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FASTRNN_TRITON_KERNEL")}
    cmd = [sys.executable, "-m", "bench", "--suite", "gpu_goals", "--dry-run", "--cells", "rnn", "--modes", "fwd"]
    done = subprocess.run([*cmd, "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["complete"] is True
    assert data["errors"] == []
    assert data["header"]["dry_run"] is True
    configs = {(r["T"], r["B"], r["H"], r["dtype"]) for r in data["rows"]}
    assert len(configs) == len(gpu_goal_configs(["rnn"], ["fwd"])) == 36
    providers = {r["provider"] for r in data["rows"]}
    assert {"fastrnn[triton]", "fastrnn[triton:step]", "fastrnn[triton:persistent]", "torch.nn"} <= providers
    # each row names the kernel shapes that really ran: the RNN has no persistent kernels,
    # so its pinned persistent rows ran the step kernels, and say so
    shapes = {r["provider"]: set() for r in data["rows"]}
    for r in data["rows"]:
        shapes[r["provider"]].add(r["kernel_shapes"])
    assert shapes["fastrnn[triton:step]"] == shapes["fastrnn[triton:persistent]"] == {"step"}
    assert shapes["torch.nn"] == {None}


def test_goal_report_names_pinned_rows_that_ran_another_shape(capsys):
    from bench import gpu_goals

    row = dict(cell="rnn", mode="fwd", dtype="float32", T=2, B=1, H=4)
    gpu_goals._report_fallbacks(
        [
            {**row, "provider": "fastrnn[triton:persistent]", "kernel_shapes": "step"},
            {**row, "provider": "fastrnn[triton:step]", "kernel_shapes": "step"},
            {**row, "provider": "torch.nn", "kernel_shapes": None},
        ]
    )
    out = capsys.readouterr().out
    assert "1 pinned rows ran other kernel shapes" in out
    assert "fastrnn[triton:persistent] rnn fwd" in out
