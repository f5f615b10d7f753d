"""Time-series forecasting: an LSTM learns the next value of a noisy multi-frequency signal,
then forecasts a whole horizon by feeding its own predictions back in.

Task. The series is a sum of three sines whose periods (20, 33.7 and 7.3 steps) share no
common multiple, plus Gaussian noise (sigma 0.15), drawn from a seeded generator. The first
70% of the series trains, the rest is held out.

Model. ``LSTM(1, hidden, batch_first=True)`` and a ``Linear(hidden, 1)`` head, trained
many-to-one: from a window of ``--window`` values predict the next one (MSE). To forecast
(one-to-many), the layer reads a window of the held-out series, then the model is rolled
forward autoregressively: each prediction is the next input, and the same LSTM layer runs
one step at a time (T=1) carrying ``(h, c)`` from step to step, so no second set of weights
exists. Every window of the held-out part that leaves room for the horizon is a forecast
origin; the error is the RMSE over origins at each step ahead, against the clean signal and
against the noisy observations.

Baselines, so that the forecast errors mean something: "last value" repeats the final
observed value; "seasonal" repeats the last observed cycle of the dominant period (20).

Picture (<out>/forecast.png): top, a stretch of held-out series (noisy and clean) with the
forecast from one origin; middle, forecast RMSE against steps ahead, model and baselines;
bottom, the train and validation loss per epoch of each implementation.

Run from the repository root:
    python -m examples.forecast [--quick] [--compare] [--backend cpp] [--out DIR]
"""

from __future__ import annotations

import math

import torch

from examples import _common

PERIODS = (20.0, 33.7, 7.3)
AMPLITUDES = (1.0, 0.6, 0.3)
NOISE = 0.15
SEASON = 20  # the dominant period, the seasonal baseline's lag


def make_series(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean, noisy) series of length n, float32."""
    g = _common.seeded(seed)
    t = torch.arange(n, dtype=torch.float64)
    phases = torch.rand(len(PERIODS), generator=g, dtype=torch.float64) * 2 * math.pi
    clean = sum(a * torch.sin(2 * math.pi * t / p + ph) for a, p, ph in zip(AMPLITUDES, PERIODS, phases, strict=True))
    noisy = clean + NOISE * torch.randn(n, generator=g, dtype=torch.float64)
    return clean.float(), noisy.float()


def windows(series: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every window of ``window`` values (N, window, 1) and the value after it (N, 1)."""
    x = series.unfold(0, window, 1)[:-1]
    y = series[window:]
    return x.unsqueeze(-1).contiguous(), y.unsqueeze(-1).contiguous()


class Forecaster(torch.nn.Module):
    def __init__(self, rnn: torch.nn.Module, hidden: int):
        super().__init__()
        self.rnn = rnn
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])

    @torch.no_grad()
    def rollout(self, context: torch.Tensor, horizon: int) -> torch.Tensor:
        """Reads ``context`` (B, W, 1), then predicts ``horizon`` steps, each from the last.
        The state (h, c) is carried through the same layer run on T=1 steps."""
        out, state = self.rnn(context)
        pred = self.head(out[:, -1])
        preds = [pred]
        for _ in range(horizon - 1):
            out, state = self.rnn(pred.unsqueeze(1), state)
            pred = self.head(out[:, -1])
            preds.append(pred)
        return torch.cat(preds, dim=1)  # (B, horizon)


def rmse_by_step(pred: torch.Tensor, truth: torch.Tensor) -> list[float]:
    return [float(v) for v in ((pred - truth) ** 2).mean(0).sqrt()]


def main(argv=None) -> dict:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--window", type=int, default=60)
    p.add_argument("--horizon", type=int, default=None)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args(argv)
    run = _common.start("forecast", args)
    epochs = args.epochs or (40 if args.quick else 100)
    hidden = args.hidden or (32 if args.quick else 64)
    length = 1500 if args.quick else 4000
    horizon = args.horizon or (40 if args.quick else 60)
    W = args.window

    clean, noisy = make_series(length, args.seed)
    split = int(0.7 * length)
    x_train, y_train = windows(noisy[:split], W)
    x_val, y_val = windows(noisy[split:], W)
    # forecast origins: every 5th position of the held-out part with W values before it and
    # room for the horizon after it
    origins = list(range(split + W, length - horizon + 1, 5))
    ctx = torch.stack([noisy[o - W : o] for o in origins]).unsqueeze(-1)
    truth_noisy = torch.stack([noisy[o : o + horizon] for o in origins])
    truth_clean = torch.stack([clean[o : o + horizon] for o in origins])
    steps = torch.arange(horizon)
    last_value = noisy[torch.tensor(origins) - 1].unsqueeze(1).expand(-1, horizon)
    seasonal = torch.stack([noisy[o - SEASON + steps % SEASON] for o in origins])
    baselines = {
        name: {"rmse_noisy": rmse_by_step(pred, truth_noisy), "rmse_clean": rmse_by_step(pred, truth_clean)}
        for name, pred in (("last_value", last_value), ("seasonal", seasonal))
    }
    x_train, y_train, x_val, y_val, ctx = (t.to(run.device) for t in (x_train, y_train, x_val, y_val, ctx))

    models, opts = {}, {}
    for impl in run.impls:
        torch.manual_seed(args.seed)
        models[impl] = Forecaster(run.rnn(impl, "LSTM", 1, hidden, batch_first=True), hidden).to(run.device)
        opts[impl] = torch.optim.Adam(models[impl].parameters(), lr=args.lr)

    curves = {impl: {"train": [], "val": []} for impl in run.impls}
    seconds = {impl: [] for impl in run.impls}
    n_batches = math.ceil(len(x_train) / args.batch)
    for epoch in range(epochs):
        order = torch.randperm(len(x_train), generator=_common.seeded(args.seed * 1000 + epoch + 1)).to(run.device)
        for impl in run.impls:
            model, opt = models[impl], opts[impl]
            watch, total = _common.Stopwatch(run.device), 0.0
            bar = run.progress(range(n_batches), desc=f"{impl} epoch {epoch + 1}/{epochs}")
            model.train()
            with watch:
                for b in bar:
                    idx = order[b * args.batch : (b + 1) * args.batch]
                    loss = torch.nn.functional.mse_loss(model(x_train[idx]), y_train[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += loss.item() * len(idx)
                    bar.set(loss=loss.item())
            seconds[impl].append(watch.seconds)
            model.eval()
            with torch.no_grad():
                val = torch.nn.functional.mse_loss(model(x_val), y_val).item()
            curves[impl]["train"].append(total / len(x_train))
            curves[impl]["val"].append(val)
            print(f"{impl} epoch {epoch + 1}: train {curves[impl]['train'][-1]:.4f} val {val:.4f}")

    results = {}
    forecasts = {}
    for impl in run.impls:
        models[impl].eval()
        pred = models[impl].rollout(ctx, horizon).cpu()
        forecasts[impl] = pred
        results[impl] = {
            "rmse_noisy": rmse_by_step(pred, truth_noisy),
            "rmse_clean": rmse_by_step(pred, truth_clean),
            "final_train_loss": curves[impl]["train"][-1],
            "final_val_loss": curves[impl]["val"][-1],
        }
    for r in list(results.values()) + list(baselines.values()):
        r["mean_rmse_noisy"] = sum(r["rmse_noisy"]) / horizon
        r["mean_rmse_clean"] = sum(r["rmse_clean"]) / horizon

    summary = _common.timing_summary(seconds)
    _common.print_timing(summary)
    for name, r in {**results, **baselines}.items():
        noisy_rmse, clean_rmse = r["mean_rmse_noisy"], r["mean_rmse_clean"]
        print(f"{name}: RMSE over {horizon} steps, vs noisy {noisy_rmse:.4f}, vs clean {clean_rmse:.4f}")
    payload = {
        "model": {
            "rnn": "LSTM",
            "input_size": 1,
            "hidden_size": hidden,
            "head": "Linear(hidden, 1)",
            "window": W,
            "rollout": "same LSTM layer on T=1 steps, (h, c) carried",
        },
        "data": {
            "length": length,
            "periods": PERIODS,
            "amplitudes": AMPLITUDES,
            "noise_sigma": NOISE,
            "train_fraction": 0.7,
            "train_windows": len(x_train),
            "val_windows": len(x_val),
            "forecast_origins": len(origins),
            "seasonal_lag": SEASON,
        },
        "train": {"epochs": epochs, "batch": args.batch, "lr": args.lr, "optimizer": "Adam", "loss": "MSE"},
        "horizon": horizon,
        "curves": curves,
        "results": results,
        "baselines": baselines,
        "timing": summary,
    }
    if "torch" in run.impls:
        payload["loss_curve_gap"] = _common.curve_gap(curves["torch"]["train"], curves["fastrnn"]["train"])
        payload["val_curve_gap"] = _common.curve_gap(curves["torch"]["val"], curves["fastrnn"]["val"])
        payload["forecast_rmse_gap"] = _common.curve_gap(
            results["torch"]["rmse_noisy"], results["fastrnn"]["rmse_noisy"]
        )
        print(f"loss curve gap torch.nn vs fastrnn: {payload['loss_curve_gap']:.3g}")

    fig, axes = _common.figure(3, 1, figsize=(9, 10))
    k = len(origins) // 2
    o = origins[k]
    span = torch.arange(o - 3 * W // 2, o + horizon)
    ax = axes[0]
    ax.plot(span, noisy[span], ".", ms=3, color="0.6", label="noisy observations")
    ax.plot(span, clean[span], color="0.3", lw=1, label="clean signal")
    fstep = torch.arange(o, o + horizon)
    for impl, style in (("fastrnn", "-"), ("torch", "--")):
        if impl in forecasts:
            ax.plot(fstep, forecasts[impl][k], style, lw=1.8, label=f"forecast ({impl})")
    ax.axvspan(o - W, o, color="C2", alpha=0.08, label="context read")
    ax.axvline(o, color="k", lw=0.6)
    ax.set_title(f"Autoregressive forecast from t={o} (held-out part)")
    ax.set_xlabel("t")
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    ax = axes[1]
    x = range(1, horizon + 1)
    for impl, style in (("fastrnn", "-"), ("torch", "--")):
        if impl in results:
            ax.plot(x, results[impl]["rmse_noisy"], style, color="C0", label=f"LSTM ({impl}) vs noisy")
            ax.plot(x, results[impl]["rmse_clean"], style, color="C1", label=f"LSTM ({impl}) vs clean")
    ax.plot(x, baselines["last_value"]["rmse_noisy"], color="C3", lw=1, label="last value vs noisy")
    ax.plot(x, baselines["seasonal"]["rmse_noisy"], color="C4", lw=1, label=f"seasonal (lag {SEASON}) vs noisy")
    ax.axhline(NOISE, color="0.5", ls=":", lw=1, label="noise sigma")
    ax.set_xlabel("steps ahead")
    ax.set_ylabel("RMSE")
    ax.set_title(f"Forecast error over {len(origins)} origins")
    ax.legend(fontsize=8, ncol=2)
    ax = axes[2]
    for impl, style in (("fastrnn", "-"), ("torch", "--")):
        if impl in curves:
            ep = range(1, epochs + 1)
            ax.plot(ep, curves[impl]["train"], style, color="C0", label=f"train ({impl})")
            ax.plot(ep, curves[impl]["val"], style, color="C1", label=f"validation ({impl})")
    ax.axhline(NOISE**2, color="0.5", ls=":", lw=1, label="noise variance")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE, one step ahead")
    ax.legend(fontsize=8)
    fig.tight_layout()
    run.save(payload, fig)
    return payload


if __name__ == "__main__":
    main()
