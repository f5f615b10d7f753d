"""examples/seq2seq.py --quick --compare: the encoder-decoder learns to sort digit strings, and
torch.nn and fastrnn train the same model to the same curves."""

import json

from examples import seq2seq


def test_seq2seq_quick_compare(tmp_path):
    payload = seq2seq.main(["--quick", "--compare", "--out", str(tmp_path), "--no-progress"])
    saved = json.loads((tmp_path / "seq2seq.json").read_text())
    assert saved["final"] == payload["final"]
    assert (tmp_path / "seq2seq.png").read_bytes()[:4] == b"\x89PNG"

    for impl in ("torch", "fastrnn"):
        loss = saved["loss_curves"][impl]
        final = saved["final"][impl]
        # measured (seed 0, cpp and reference lanes alike): first-epoch mean loss 1.673, last
        # 0.101, a fall of 16.5x; a model that does not train falls by ~1x (2x margin)
        assert loss[0] / loss[-1] > 8, (impl, loss)
        # chance of an exact match is ~1e-8 (a random string of 3..10 tokens plus <eos>), and
        # per-token chance is 1/11; measured 0.992 exact and 0.998 per token in both lanes,
        # 0.80 exact two epochs before the end
        assert final["exact_match"] > 0.9, (impl, final)
        assert final["token_accuracy"] > 0.95, (impl, final)

    # the same weights and batches: the curves may differ only by float rounding, amplified by
    # training. Measured loss-curve gaps: 1.5e-6 (cpp) and 4.4e-7 (reference) with one thread,
    # 5.6e-6 (cpp) with two; the bound allows ~20x the largest. Exact-match curves: identical
    # with one thread, one of the 500 held-out strings flipped (an argmax near-tie) in one epoch
    # with two; the bound allows 5 (1%) against curves that rise from 0.006 to 0.99.
    assert saved["loss_curve_gap"] < 1e-4, saved["loss_curve_gap"]
    assert saved["exact_match_curve_gap"] < 5.5 / 500, saved["exact_match_curve_gap"]
