"""examples/gates.py in --quick --compare mode: the gradient-decay measurement, what training
learned, the cell loop against the fused layer, and torch.nn against fastrnn.

Every threshold below is set from the seed-0 run in both lanes (cpp and reference); the
measured values are quoted beside it (cpp; reference where it differs)."""

import json

import pytest

from examples import gates


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("gates")
    payload = gates.main(["--quick", "--compare", "--out", str(out), "--no-progress"])
    return payload, out


def test_json_matches_return_value(result):
    payload, out = result
    saved = json.loads((out / "gates.json").read_text())
    assert saved["decay"] == payload["decay"]
    assert saved["not_trained_at"] == [200]  # quick trains at T=50 only and says so
    assert saved["trained_at"]["LSTM"]["200"] == 50


def test_png_written(result):
    _, out = result
    assert (out / "gates.png").read_bytes()[:4] == b"\x89PNG"


def test_cell_loop_reproduces_the_layer(result):
    # the hand-stepped cell is the trained model: measured rel. RMS <= 1.1e-7 in float32 (bound
    # 2e-5, the numerics table's) and <= 2e-16 in float64 (bound 1e-9)
    payload, _ = result
    for kind in gates.CELLS:
        for dtype, check in payload["cell_loop_check"][kind]["50"].items():
            assert check["rel_rms"] <= check["bound"], (kind, dtype, check)


def test_gradient_decays_at_init(result):
    # at PyTorch's default init every cell loses the gradient geometrically: measured ratio
    # ||dL/dh_(T-10)|| / ||dL/dh_T|| at T=50: RNN 5.4e-3, GRU 4.5e-3, LSTM 8.2e-4, peephole
    # 1.6e-3 (the forget gate starts near sigmoid(0) = 0.5, so the additive path gives no
    # advantage yet); bound 3e-2, 5x above the largest
    payload, _ = result
    for kind in gates.CELLS:
        assert payload["decay"][kind]["init"]["50"]["ratio"]["10"] < 3e-2, kind


def test_training_opens_the_lstm_path(result):
    # after 400 steps at T=50 the LSTM's gradient reaches 10 steps back with ratio 1.8e-2
    # (init 8.2e-4) while the tanh RNN's is 1.1e-4 (reference 1.6e-4); asserted: LSTM >= 5x its
    # init and >= 20x the RNN's (measured 22x and 160x, reference 112x).
    # At T=200 (weights from T=50), k=50: LSTM 1.1e-2 against RNN 2.8e-12 (reference 1.3e-11); asserted 1e3x.
    d = result[0]["decay"]
    lstm, rnn = d["LSTM"], d["RNN"]
    assert lstm["trained"]["50"]["ratio"]["10"] >= 5 * lstm["init"]["50"]["ratio"]["10"]
    assert lstm["trained"]["50"]["ratio"]["10"] >= 20 * rnn["trained"]["50"]["ratio"]["10"]
    assert lstm["trained"]["200"]["ratio"]["50"] >= 1e3 * rnn["trained"]["200"]["ratio"]["50"]


def test_lstm_and_gru_learn_the_task(result):
    # variance baseline 1/6 = 0.167. Measured test MSE after 400 steps at T=50: LSTM 0.0020
    # (baseline/83), GRU 0.0005; asserted: below baseline/20. A model that stays on the
    # plateau (the tanh RNN: 0.22-0.23, the peephole LSTM: 0.167) fails this; the reference lane
    # measured the same MSEs to 4 digits.
    payload, _ = result
    base = payload["variance_baseline_mse"]
    for kind in ("LSTM", "GRU"):
        m = payload["metrics"][kind]["trained"]["50"]
        assert m["mse"] < base / 20, (kind, m)
        assert m["accuracy"] > 0.5, (kind, m)  # measured LSTM 0.68, GRU 0.93; chance ~0.05


def test_torch_and_fastrnn_curves_agree(result):
    # same seed and batches: GRU and LSTM measured gap 1.8e-6 and 4.6e-5 over all 8 epochs
    # (reference 1.4e-5 and 1.5e-4).
    # The tanh RNN wanders on the variance plateau at lr 2e-2, where float rounding grows
    # chaotically: its curves agree to 1e-6 for 4 epochs, then measured gap 4.6e-2 (reference 2.6e-2).
    payload, _ = result
    gaps = payload["loss_curve_gap"]
    assert set(gaps) == {"RNN", "GRU", "LSTM"}  # PeepholeLSTM has no torch.nn twin
    assert gaps["GRU"]["50"] <= 1e-3
    assert gaps["LSTM"]["50"] <= 1e-3
    curves = payload["curves"]["RNN"]["50"]
    from examples import _common

    assert _common.curve_gap(curves["torch"][:4], curves["fastrnn"][:4]) <= 1e-4
    assert gaps["RNN"]["50"] <= 0.2
