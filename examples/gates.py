"""Why gates matter: how far back the gradient reaches in a tanh RNN, a GRU, an LSTM and a
peephole LSTM, at initialisation and after training on the adding problem.

Task: the adding problem. Each step carries two inputs, a value drawn uniformly from [0, 1]
and a marker that is 1 at exactly two steps (one in the first half of the sequence, one in
the second half) and 0 elsewhere. The target is the sum of the two marked values, read from
the last step. Predicting the mean (1.0) always gives MSE 1/6 ~ 0.167 (the variance
baseline); the task counts as solved when the MSE is far below it, and the accuracy is the
fraction of test sequences with |error| < 0.04.

Model: one recurrent layer (fastrnn.RNN with tanh, fastrnn.GRU, fastrnn.LSTM or
fastrnn.PeepholeLSTM; hidden size 32) and a linear read-out of the last output, trained with
Adam and MSE at T = 50 and T = 200. The T = 200 model starts from the T = 50 weights (a
curriculum: it halves the steps the LSTM needs to leave the plateau, measured). T = 1000 is
NOT trained: one training step there costs about 5x one at T = 200, so the full run would
not fit its few minutes. At T = 1000 the decay curves are measured at initialisation and with
the weights trained at T = 200, and the test accuracy of those weights at T = 1000 is
reported as such (key ``"trained_at"`` in the JSON says which weights every curve used).

Measurement: the fused layers do not expose the total gradient dL/dh_t (their out[t].grad is
only the direct part, through the read-out). So the trained weights are copied into the
matching fastrnn cell (RNNCell, GRUCell, LSTMCell, PeepholeLSTMCell), which is stepped
through the sequence by hand, in float64 so that the smallest gradients stay representable,
with h_t.retain_grad(). The per-sequence loss sum(error^2) gives each sequence its own
dL/dh_t; the curve is the batch mean of ||dL/dh_t|| against the distance k = T - t to the
loss, and the table the ratio ||dL/dh_{T-k}|| / ||dL/dh_T||. The cell loop's outputs are
checked against the fused layer's on the same weights (``"cell_loop_check"``).

What it shows (seed 0, full run with --compare; the JSON holds every number): at PyTorch's
default initialisation all four cells lose the gradient at about the same geometric rate, a
factor ~0.6 per step (ratio ||dL/dh_(T-k)|| / ||dL/dh_T|| at k = 10: RNN 5.4e-3, GRU 4.5e-3,
LSTM 8.3e-4, peephole 1.6e-3; at k = 200 about 1e-40; below float64's range by k ~ 830): the
tanh RNN multiplies it by W^T diag(tanh') at every step, and the LSTM's additive cell update
c_t = f_t * c_{t-1} + i_t * g_t scales it only by f_t, but f_t starts near sigmoid(0) = 0.5,
so at init the gate buys nothing. Training moves the forget gate (and the GRU's update gate)
towards keeping the state. Trained at T = 200 (1500 steps from the T = 50 weights), the ratio
at k = 50 is 3.9e-3 (LSTM), 0.83 (GRU), 1.5e-2 (peephole) against 2e-91 for the tanh RNN,
whose gradient now shrinks by 0.015 per step: the additive path carries the gradient and the
gated cells solve the task (test accuracy LSTM 0.997, GRU 1.000, peephole 0.941, MSE <= 5e-4)
while the RNN stays at the variance baseline (MSE 0.170, accuracy 0.07). With those T = 200
weights run at T = 1000 (not trained there) the gated cells' gradient still reaches the first
step (LSTM ratio at k = 999: 1.2e-2, GRU 2.8e-3, peephole 8.3e-3) but the solution does not
carry over to the longer sequence (accuracy LSTM 0.00, GRU 0.08, peephole 0.00): gradient
reach is necessary, not sufficient. --quick (400 steps at T = 50) already shows the split:
LSTM ratio at k = 10 1.8e-2 and MSE 0.002 against the RNN's 1.1e-4 and 0.22.

The picture: ||dL/dh_t|| against distance (log y), one panel per T, top row at
initialisation, bottom row after training, one line per cell, final accuracy in the legend.

``--compare`` also trains the torch.nn twins of the drop-in cells (RNN, GRU, LSTM) on the same
seed and batches and reports the loss-curve gap and time per epoch; PeepholeLSTM has no
torch.nn twin and is trained with fastrnn only.

Run: ``python -m examples.gates [--quick] [--compare] [--out DIR] [--backend cpp]``.
``--quick`` trains at T = 50 only (400 steps) and measures the curves at T = 50 and 200.
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch
from torch import nn

import fastrnn
from fastrnn.testing import bound, rel_rms

from . import _common

CELLS = ("RNN", "GRU", "LSTM", "PeepholeLSTM")
DROP_IN = ("RNN", "GRU", "LSTM")
CELL_MODULE = {"RNN": "RNNCell", "GRU": "GRUCell", "LSTM": "LSTMCell", "PeepholeLSTM": "PeepholeLSTMCell"}
COLORS = {"RNN": "tab:red", "GRU": "tab:green", "LSTM": "tab:blue", "PeepholeLSTM": "tab:purple"}
VARIANCE_BASELINE = 1.0 / 6.0  # Var(u1 + u2) for two independent U(0, 1) values
TOLERANCE = 0.04  # |error| below which a sum counts as right
DISTANCES = (1, 10, 50, 200, 500, 999)


class AddingModel(nn.Module):
    def __init__(self, rnn: nn.Module, hidden: int):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


def adding_batch(gen: torch.Generator, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, length, 2) inputs and (batch,) targets: one marker in each half of the sequence."""
    values = torch.rand(batch, length, generator=gen)
    half = length // 2
    first = torch.randint(0, half, (batch,), generator=gen)
    second = torch.randint(half, length, (batch,), generator=gen)
    markers = torch.zeros(batch, length)
    rows = torch.arange(batch)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    return torch.stack([values, markers], dim=-1), (values * markers).sum(1)


def epoch_batches(seed: int, length: int, epoch: int, steps: int, batch: int):
    """The same batches for every implementation: a generator per (seed, T, epoch)."""
    gen = _common.seeded(seed * 1_000_003 + length * 1009 + epoch)
    return [adding_batch(gen, batch, length) for _ in range(steps)]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device) -> dict:
    model.eval()
    err = model(x.to(device)).cpu() - y
    model.train()
    return {"mse": float((err**2).mean()), "accuracy": float((err.abs() < TOLERANCE).float().mean())}


def build_models(run, kind: str, hidden: int) -> dict:
    """One model per implementation, each built right after the same manual_seed."""
    models = {}
    for impl in run.impls:
        if impl == "torch" and kind not in DROP_IN:
            continue
        torch.manual_seed(run.args.seed)
        models[impl] = AddingModel(run.rnn(impl, kind, 2, hidden, batch_first=True), hidden).to(run.device)
    return models


def train(run, kind: str, models: dict, length: int, steps: int, eval_set) -> dict:
    """Trains every implementation's model on the same batches, epoch by epoch, interleaved."""
    args = run.args
    opts = {impl: torch.optim.Adam(m.parameters(), lr=args.lr) for impl, m in models.items()}
    curves = {impl: [] for impl in models}
    seconds = {impl: [] for impl in models}
    epochs = math.ceil(steps / args.epoch_steps)
    for epoch in range(epochs):
        n = min(args.epoch_steps, steps - epoch * args.epoch_steps)
        batches = epoch_batches(args.seed, length, epoch, n, args.batch)
        for impl, model in models.items():
            watch = _common.Stopwatch(run.device)
            total = 0.0
            bar = run.progress(batches, desc=f"{kind} T={length} {impl} epoch {epoch}")
            for x, y in bar:
                with watch:
                    x, y = x.to(run.device), y.to(run.device)
                    loss = ((model(x) - y) ** 2).mean()
                    opts[impl].zero_grad()
                    loss.backward()
                    # the adding problem's rare large gradients (a marker pair far apart) would
                    # otherwise throw Adam off the plateau-escaping direction
                    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    opts[impl].step()
                total += loss.item()
                bar.set(loss=loss.item())
            curves[impl].append(total / n)
            seconds[impl].append(watch.seconds)
    final = {impl: evaluate(m, *eval_set, run.device) for impl, m in models.items()}
    return {"curves": curves, "seconds": seconds, "final": final}


@contextlib.contextmanager
def one_thread():
    """The measurement steps (64, 32) tensors one time step at a time in Python: intra-op
    threads only add synchronisation there (measured on a busy 2-core host: the --quick run
    took 162 s of CPU with 2 threads, 22 s with 1). Training keeps the default threads."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def cell_from_layer(layer: nn.Module, kind: str, backend: str, dtype: torch.dtype) -> nn.Module:
    """The fastrnn cell of ``layer``'s kind holding copies of its layer-0 weights."""
    cell = getattr(fastrnn, CELL_MODULE[kind])(layer.input_size, layer.hidden_size, backend=backend)
    with torch.no_grad():
        for name, param in cell.named_parameters():
            param.copy_(getattr(layer, f"{name}_l0"))
    return cell.to(device=layer.weight_ih_l0.device, dtype=dtype)


def cell_loop(cell: nn.Module, kind: str, x: torch.Tensor) -> list[torch.Tensor]:
    """h_1..h_T from stepping ``cell`` by hand, each with retain_grad()."""
    batch = x.size(0)
    h = x.new_zeros(batch, cell.hidden_size)
    c = h.clone() if kind in ("LSTM", "PeepholeLSTM") else None
    hs = []
    for t in range(x.size(1)):
        if c is None:
            h = cell(x[:, t], h)
        else:
            h, c = cell(x[:, t], (h, c))
        if h.requires_grad:
            h.retain_grad()
        hs.append(h)
    return hs


def grad_profile(model: AddingModel, kind: str, x: torch.Tensor, y: torch.Tensor, backend: str) -> list[float]:
    """Batch mean of ||dL/dh_t|| at distance k = T - t, k = 0..T-1, in float64."""
    cell = cell_from_layer(model.rnn, kind, backend, torch.float64)
    head = copy.deepcopy(model.head).to(torch.float64)
    x, y = x.to(device=cell.weight_ih.device, dtype=torch.float64), y.to(x.device, torch.float64)
    hs = cell_loop(cell, kind, x)
    # a per-sequence loss, so that row b of dL/dh_t is sequence b's own gradient
    ((head(hs[-1]).squeeze(-1) - y) ** 2).sum().backward()
    norms = [h.grad.norm(dim=1).mean().item() for h in hs]
    return norms[::-1]


def cell_loop_check(model: AddingModel, kind: str, x: torch.Tensor, backend: str) -> dict:
    """rel. RMS of the hand-stepped cell's h_1..h_T against the fused layer's output, on the
    same weights: in float32 (the trained model as it runs) and in float64 (same math)."""
    result = {}
    with torch.no_grad():
        for dtype in (torch.float32, torch.float64):
            layer = copy.deepcopy(model.rnn).to(dtype)
            xd = x.to(device=layer.weight_ih_l0.device, dtype=dtype)
            fused, _ = layer(xd)
            stepped = torch.stack(cell_loop(cell_from_layer(layer, kind, backend, dtype), kind, xd), dim=1)
            name = str(dtype).replace("torch.", "")
            result[name] = {"rel_rms": rel_rms(stepped, fused), "bound": bound(dtype)}
    return result


def ratios(profile: list[float]) -> dict:
    """||dL/dh_{T-k}|| / ||dL/dh_T|| at the distances that fit in the sequence."""
    return {str(k): profile[k] / profile[0] for k in DISTANCES if k < len(profile)}


def per_step_factor(profile: list[float]) -> float | None:
    """Geometric-mean shrink factor per step over the representable part of the curve."""
    last = max((k for k, v in enumerate(profile) if v > 0), default=0)
    if last == 0:
        return None
    return math.exp(math.log(profile[last] / profile[0]) / last)


def main(argv=None) -> dict:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-2)
    p.add_argument("--epoch-steps", type=int, default=50, help="optimizer steps per epoch")
    p.add_argument("--steps", type=int, default=None, help="steps per training length (default 1500, quick 400)")
    p.add_argument("--measure-batch", type=int, default=None, help="sequences the gradient norms are averaged over")
    args = p.parse_args(argv)
    run = _common.start("gates", args)
    steps = args.steps or (400 if args.quick else 1500)
    train_lengths = (50,) if args.quick else (50, 200)
    measure_lengths = (50, 200) if args.quick else (50, 200, 1000)
    eval_n = 256 if args.quick else 1000
    if args.measure_batch is None:
        args.measure_batch = 32 if args.quick else 64

    eval_sets = {T: adding_batch(_common.seeded(args.seed + 7919 + T), eval_n, T) for T in measure_lengths}
    measure_sets = {
        T: adding_batch(_common.seeded(args.seed + 104729 + T), args.measure_batch, T) for T in measure_lengths
    }

    training, metrics, profiles, trained_at, checks, timing, gaps = {}, {}, {}, {}, {}, {}, {}
    for kind in CELLS:
        models = build_models(run, kind, args.hidden)
        fast = models["fastrnn"]
        # the init curves use the fastrnn model's weights, identical to torch.nn's
        init = copy.deepcopy(fast)
        profiles[kind] = {"init": {}, "trained": {}}
        metrics[kind] = {"init": {}, "trained": {}}
        trained_at[kind] = {}
        checks[kind] = {}
        weights_at = {}
        for T in train_lengths:
            result = train(run, kind, models, T, steps, eval_sets[T])
            training.setdefault(kind, {})[str(T)] = result
            weights_at[T] = copy.deepcopy(fast)
            with one_thread():
                checks[kind][str(T)] = cell_loop_check(fast, kind, measure_sets[T][0][:8], args.backend)
            if "torch" in models:
                gaps.setdefault(kind, {})[str(T)] = _common.curve_gap(
                    result["curves"]["torch"], result["curves"]["fastrnn"]
                )
            timing.setdefault(kind, {})[str(T)] = _common.timing_summary(result["seconds"])
        for T in measure_lengths:
            src = max(t for t in train_lengths if t <= T)
            trained_at[kind][str(T)] = src
            x, y = measure_sets[T]
            with one_thread():
                profiles[kind]["init"][str(T)] = grad_profile(init, kind, x, y, args.backend)
                profiles[kind]["trained"][str(T)] = grad_profile(weights_at[src], kind, x, y, args.backend)
                metrics[kind]["init"][str(T)] = evaluate(init, *eval_sets[T], run.device)
                metrics[kind]["trained"][str(T)] = evaluate(weights_at[src], *eval_sets[T], run.device)

    summary = {
        kind: {
            state: {
                str(T): {
                    "ratio": ratios(profiles[kind][state][str(T)]),
                    "per_step_factor": per_step_factor(profiles[kind][state][str(T)]),
                }
                for T in measure_lengths
            }
            for state in ("init", "trained")
        }
        for kind in CELLS
    }
    report(summary, metrics, trained_at, measure_lengths, gaps, timing)

    fig = plot(profiles, metrics, trained_at, measure_lengths, train_lengths)
    payload = {
        "task": "adding problem: sum of the two marked values of U(0,1) inputs, MSE on the last output",
        "variance_baseline_mse": VARIANCE_BASELINE,
        "accuracy_tolerance": TOLERANCE,
        "model": {"hidden": args.hidden, "layers": 1, "head": "Linear(hidden, 1) on the last output"},
        "training": {
            "lengths": list(train_lengths),
            "steps_per_length": steps,
            "batch": args.batch,
            "optimizer": f"Adam lr={args.lr}, grad-norm clip 1.0",
            "epoch_steps": args.epoch_steps,
            "curriculum": "each longer T starts from the weights trained at the previous T",
        },
        "not_trained_at": [T for T in measure_lengths if T not in train_lengths],
        "note": (
            "lengths in not_trained_at were not trained (budget): their 'trained' curves and metrics use "
            "the weights trained at trained_at[cell][T]"
        ),
        "trained_at": trained_at,
        "measurement": {
            "what": "batch mean of ||dL/dh_t|| with L = sum over sequences of squared error, fastrnn cell "
            "stepped by hand in float64; index k of a profile is the distance T - t",
            "batch": args.measure_batch,
        },
        "metrics": metrics,
        "gradient_norms": profiles,
        "decay": summary,
        "cell_loop_check": checks,
        "curves": {kind: {T: r["curves"] for T, r in per_t.items()} for kind, per_t in training.items()},
        "timing": timing,
        "drop_in": list(DROP_IN),
        "fastrnn_only": {"PeepholeLSTM": "no torch.nn twin: trained with fastrnn only, no curve gap"},
    }
    if args.compare:
        payload["loss_curve_gap"] = gaps
    run.save(payload, fig)
    return json_roundtrip(payload)


def json_roundtrip(payload: dict) -> dict:
    import json

    return json.loads(json.dumps(payload))


def fmt(v: float | None) -> str:
    return "   --   " if v is None else f"{v:8.1e}"


def report(summary, metrics, trained_at, measure_lengths, gaps, timing) -> None:
    for state in ("init", "trained"):
        print(f"\n||dL/dh_(T-k)|| / ||dL/dh_T||, {state} (0 = below float64's range)")
        for T in measure_lengths:
            ks = [k for k in DISTANCES if k < T]
            print(f"  T={T:<5}" + "".join(f"  k={k:<6}" for k in ks) + "  per step  mse     acc")
            for kind, per in summary.items():
                s = per[state][str(T)]
                m = metrics[kind][state][str(T)]
                src = (
                    f" (weights from T={trained_at[kind][str(T)]})"
                    if state == "trained" and trained_at[kind][str(T)] != T
                    else ""
                )
                print(
                    f"  {kind:<12}"
                    + "".join(f" {fmt(s['ratio'][str(k)])}" for k in ks)
                    + f"  {fmt(s['per_step_factor'])} {m['mse']:.4f} {m['accuracy']:.3f}{src}"
                )
    for kind, per_t in timing.items():
        for T, summ in per_t.items():
            gap = gaps.get(kind, {}).get(T)
            print(f"{kind} T={T}: " + ("" if gap is None else f"loss-curve gap torch vs fastrnn {gap:.2e}; "), end="")
            _common.print_timing(summ)


def plot(profiles, metrics, trained_at, measure_lengths, train_lengths):
    ncol = len(measure_lengths)
    fig, axes = _common.figure(2, ncol, figsize=(4.6 * ncol, 7.5), squeeze=False)
    for row, state in enumerate(("init", "trained")):
        for col, T in enumerate(measure_lengths):
            ax = axes[row][col]
            for kind in CELLS:
                prof = profiles[kind][state][str(T)]
                ks = [k for k, v in enumerate(prof) if v > 0]
                m = metrics[kind][state][str(T)]
                ax.semilogy(
                    ks, [prof[k] for k in ks], color=COLORS[kind], lw=1.4, label=f"{kind} acc {m['accuracy']:.2f}"
                )
            src = {trained_at[k][str(T)] for k in CELLS}
            if state == "init":
                title = f"T={T}, at initialisation"
            elif T in train_lengths:
                title = f"T={T}, trained at T={T}"
            else:
                title = f"T={T}, weights trained at T={max(src)} (not at {T})"
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("distance to the loss k = T - t")
            if col == 0:
                ax.set_ylabel("mean ||dL/dh_t||")
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=8, loc="lower left")
    fig.suptitle("Adding problem: gradient reaching h_t vs distance to the loss (accuracy: |error| < 0.04)")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
