"""ESM-2 attention: fair-esm's own MultiheadAttention vs scaled_dot_product_attention (`use_sdpa`).

Same weights, same padded batch; training throughput (forward + backward of the protein encoder's ESM part,
`SequenceEncoder`) in tokens/s and MFU. On a GPU: bf16 autocast, ESM-2 shapes 35M (12 x 480), 150M (30 x 640)
and 650M (33 x 1280) by default, random weights, batch of `--batch` sequences of up to `--length` residues
(lengths drawn between half and full, so rows are padded).
MFU = model FLOPs / (time x peak bf16 dense FLOP/s); model FLOPs per token = 3 x (24 d^2 + 4 T d) per
layer (fwd + 2 x fwd for backward; QKV/out projections, 4x FFN, QK^T and AV), padding counted as the kernels
compute it. Targets (issue 8): SDPA >= 2x fair-esm and MFU >= 35% on 150M and 650M. Without a GPU it prints
"no GPU" and, unless `--no-cpu`, a tiny fp32 CPU comparison (ESM-2 8M shape) so the script is exercised
anywhere (no target applies to it).

    .venv/bin/python tests/bench/bench_esm_attention.py [--quick] [--shapes 150M,650M] [--batch 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

SHAPES = {"8M": (6, 320, 20), "35M": (12, 480, 20), "150M": (30, 640, 20), "650M": (33, 1280, 20)}
# Peak dense bf16 tensor FLOP/s (no sparsity), by device name substring; the first match wins, so the PCIe and
# NVL H100 (fewer SMs, lower clocks) come before the SXM part. `--peak-tflops` overrides it.
PEAK_BF16 = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
}


def peak_flops(name: str) -> float | None:
    for key, value in PEAK_BF16.items():
        if key in name:
            return value
    return None


def batch_tokens(n: int, length: int, seed: int = 0) -> torch.Tensor:
    from plexlab.datamodules.protein.datamodule import esm_alphabet

    g = torch.Generator().manual_seed(seed)
    letters = "ACDEFGHIKLMNPQRSTVWY"
    seqs = []
    for i in range(n):
        size = int(torch.randint(length // 2, length + 1, (1,), generator=g))
        idx = torch.randint(0, len(letters), (size,), generator=g)
        seqs.append((str(i), "".join(letters[j] for j in idx)))
    _, _, tokens = esm_alphabet().get_batch_converter()(seqs)
    return tokens


def flops_per_step(layers: int, dim: int, tokens: torch.Tensor) -> float:
    b, t = tokens.shape
    per_token = layers * (24 * dim * dim + 4 * t * dim)
    return 3.0 * per_token * b * t


def time_steps(enc, tokens: torch.Tensor, steps: int, warmup: int, device: str, bf16: bool) -> list[float]:
    def step() -> None:
        enc.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            out, pooled = enc(tokens)
            loss = out.float().square().mean() + pooled.float().square().mean()
        loss.backward()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def run(shape: str, batch: int, length: int, steps: int, warmup: int, device: str, bf16: bool) -> dict:
    from plexlab.modules.protein.encoders import SequenceEncoder

    layers, dim, heads = SHAPES[shape]
    torch.manual_seed(0)
    enc = SequenceEncoder(None, layers, dim, heads, use_sdpa=False).to(device).train()
    tokens = batch_tokens(batch, length).to(device)
    out = {"shape": shape, "tokens": tokens.numel(), "real": int((tokens != 1).sum())}
    for name, sdpa in (("esm", False), ("sdpa", True), ("esm_again", False), ("sdpa_again", True)):
        enc.set_sdpa(sdpa)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = time_steps(enc, tokens, steps, warmup, device, bf16)
        key = name.removesuffix("_again")
        out.setdefault(key, []).extend(times)
        if device == "cuda":
            out[f"{key}_mem"] = torch.cuda.max_memory_allocated() / 2**30
    out["flops"] = flops_per_step(layers, dim, tokens)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--shapes", default=None, help="default 35M,150M,650M on GPU, 8M on CPU")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--length", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--no-cpu", action="store_true", help="without a GPU, exit after 'no GPU'")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, for MFU")
    args = parser.parse_args()

    gpu = torch.cuda.is_available()
    if gpu:
        device, bf16 = "cuda", True
        shapes = (args.shapes or ("150M" if args.quick else "35M,150M,650M")).split(",")
        batch, length = args.batch or 8, args.length or 512
        steps, warmup = args.steps or (5 if args.quick else 20), 3
        name = torch.cuda.get_device_name()
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        print(
            f"no GPU: torch.cuda.is_available() is False (torch {torch.__version__}), so no GPU figures "
            "and no MFU. On a GPU machine with a CUDA build of torch, run: "
            "python tests/bench/bench_esm_attention.py"
        )
        if args.no_cpu:
            return
        device, bf16 = "cpu", False
        shapes = (args.shapes or "8M").split(",")
        batch, length = args.batch or 4, args.length or (64 if args.quick else 128)
        steps, warmup = args.steps or (3 if args.quick else 5), 1
        name = "CPU"
        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    peak = (args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(name)) if gpu else None
    if gpu and peak is None:
        print(f"unknown peak bf16 FLOP/s for {name}: pass --peak-tflops for MFU")

    rows = [run(s, batch, length, steps, warmup, device, bf16) for s in shapes]
    print(
        f"\nESM-2 fwd+bwd, batch {batch} x up to {length} residues (padded), "
        f"{'bf16 autocast' if bf16 else 'fp32'}, {name}, torch {torch.__version__}, "
        f"{steps} timed steps x 2 rounds each, medians; load {os.getloadavg()[0]:.1f}"
    )
    print(
        "| ESM-2 shape | attention | step ms | tokens/s (incl. padding) | residue tokens/s | MFU "
        "| peak memory GiB | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = statistics.median(r["esm"])
        for key in ("esm", "sdpa"):
            t = statistics.median(r[key])
            mfu = f"{r['flops'] / t / peak:.1%}" if peak else "n/a"
            mem = f"{r[f'{key}_mem']:.1f}" if f"{key}_mem" in r else "n/a"
            print(
                f"| {r['shape']} | {key} | {1000 * t:.1f} | {r['tokens'] / t:,.0f} | {r['real'] / t:,.0f} "
                f"| {mfu} | {mem} | {base / t:.2f}x |"
            )


if __name__ == "__main__":
    main()
