"""Benchmark configurations: a sweep over hidden size and batch at fixed T, a sweep over
sequence length, and two named anchors from the literature (suite "default"); the GPU
goal grid of the persistent-kernel work (suite "gpu_goals", see bench/gpu_goals.py); and the
LSTM variants against their TorchScript peer and fastrnn.LSTM (suite "variants", see
bench/variants_table.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Config:
    cell: str
    T: int
    B: int
    I: int
    H: int
    mode: str  # "fwd" (no_grad) or "fwdbwd"
    sweep: str  # "hidden", "seq", an anchor name, "goal" or "variants"
    dtype: str = "float32"

    def label(self) -> str:
        dt = "" if self.dtype == "float32" else f" {self.dtype}"
        return f"{self.cell} {self.mode}{dt} T={self.T} B={self.B} I={self.I} H={self.H}"

    def asdict(self):
        return asdict(self)


# the LSTM variants torch.nn lacks (fastrnn.PeepholeLSTM, fastrnn.LayerNormLSTM)
VARIANTS = ("peephole_lstm", "layernorm_lstm")

# PyTorch's benchmarks/fastrnns default and FlashRNN's headline configuration.
ANCHORS = {"fastrnns_default": dict(T=100, B=64, I=512, H=512), "flashrnn": dict(T=1024, B=16, I=768, H=768)}


def configs(device: str, cells, modes, quick: bool) -> list[Config]:
    gpu = device == "cuda"
    if quick:
        hidden, batches, seqs, T = [64, 256], [1, 16], [50, 200], 50
    elif gpu:
        hidden, batches, seqs, T = [128, 256, 512, 768, 1024], [1, 16, 64], [100, 300, 1000, 3000], 100
    else:
        hidden, batches, seqs, T = [64, 128, 256, 512], [1, 16, 64], [25, 100, 400], 100
    out = []
    for cell in cells:
        for mode in modes:
            out += [Config(cell, T, b, h, h, mode, "hidden") for b in batches for h in hidden]
            out += [Config(cell, t, 16, 128, 128, mode, "seq") for t in seqs]
            if not quick:
                for name, a in ANCHORS.items():
                    # FlashRNN's anchor is a GPU workload: on a 2-core CPU one run of it with
                    # the loop providers takes minutes, so the CPU sweep keeps only the
                    # PyTorch fastrnns default.
                    if gpu or name == "fastrnns_default":
                        out.append(Config(cell, a["T"], a["B"], a["I"], a["H"], mode, name))
    return out


def gpu_goal_configs(cells, modes) -> list[Config]:
    """The persistent-kernel goal grid: LSTM bf16/fp32 forward and forward+backward over
    B {1, 16, 64} x H {256, 512, 1024} x T {100, 1024} (I = H), GRU forward+backward on the
    same grid, and fp16 LSTM at FlashRNN's anchor (B=16, T=1024, H=768), cuDNN's persistent
    best case. The per-step latency goal (B=16, H=512, forward) is read from the T=100 and
    T=1024 rows of the grid. PeepholeLSTM and LayerNormLSTM run the LSTM's grid (bf16/fp32,
    forward and forward+backward), read against the LSTM rows of the same run."""
    out = []
    for cell in cells:
        for mode in modes:
            if cell == "gru" and mode == "fwd":
                continue
            for dtype in ("bfloat16", "float32"):
                out += [
                    Config(cell, T, B, H, H, mode, "goal", dtype)
                    for B in (1, 16, 64)
                    for H in (256, 512, 1024)
                    for T in (100, 1024)
                ]
            if cell == "lstm":
                a = ANCHORS["flashrnn"]
                out.append(Config(cell, a["T"], a["B"], a["I"], a["H"], mode, "flashrnn", "float16"))
    return out


def dry_run(cfg: Config) -> Config:
    """A tiny stand-in for ``cfg`` that the Triton interpreter runs in well under a second:
    sizes shrunk (H / 64, at least 4; T 2 or 3; B 1 to 3) but ordered as in the real grid,
    so every config of a suite still gets its own row."""
    return replace(
        cfg,
        T=2 + (cfg.T > 100),
        B=1 + (cfg.B > 1) + (cfg.B > 16),
        I=max(4, cfg.I // 64),
        H=max(4, cfg.H // 64),
    )


# (T, B, I, H) of the variants suite: the small, medium and large CPU rows of
# bench/cpu_table.py, where a TorchScript loop pays its per-step overhead most to least.
VARIANT_SHAPES = ((100, 1, 32, 64), (100, 8, 64, 128), (100, 32, 256, 256))


def variant_configs(cells, modes) -> list[Config]:
    return [
        Config(cell, T, B, I, H, mode, "variants")
        for cell in cells
        for (T, B, I, H) in VARIANT_SHAPES
        for mode in modes
    ]


def shape_key(cfg: Config) -> tuple:
    """Configs with equal keys are the same measurement (an anchor may lie on a sweep)."""
    return (cfg.cell, cfg.mode, cfg.T, cfg.B, cfg.I, cfg.H, cfg.dtype)
