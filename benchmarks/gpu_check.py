"""NVML meter on a real NVIDIA GPU: the energy counter against integrated power, under load.

Run on a machine with an NVIDIA GPU, nvidia-ml-py (``pip install 'ecoq[nvidia]'``) and torch or
cupy, from the repository root with the venv's Python:

    python benchmarks/gpu_check.py [--gpu 0] [--idle 5] [--load 30] [--write]

It opens two `NvmlMeter`s on the same GPU, one on NVML's total-energy counter and one
integrating ``nvmlDeviceGetPowerUsage`` every 0.1 s (trapezoid rule), then reads both over an
idle phase and over a matrix-multiply loop (bf16 8192×8192, kept on the GPU). It prints both
energies per phase, the mean power and their difference; the two methods should agree within a
few per cent (NVML's power reading is itself an average over a recent window on newer GPUs).
With --write it records the result as the "NVML meter on a real GPU" section of
benchmarks/RESULTS.md. Exits 2 with a message when there is no GPU, NVML or array library.
"""

import argparse
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTION = "## NVML meter on a real GPU"


def matmul_loop(gpu: int) -> tuple[str, Callable[[float], int]]:
    """A function that keeps GPU `gpu` busy multiplying matrices for some seconds; returns
    how many products it made. Uses torch, else cupy."""
    try:
        import torch  # type: ignore[import-not-found]
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        device = torch.device("cuda", gpu)
        a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)

        def run_torch(seconds: float) -> int:
            n, end = 0, time.monotonic() + seconds
            while time.monotonic() < end:
                for _ in range(20):
                    torch.matmul(a, b)
                torch.cuda.synchronize(device)
                n += 20
            return n

        return f"torch {torch.__version__}", run_torch
    try:
        import cupy  # type: ignore[import-not-found]
    except ImportError:
        raise SystemExit(
            "gpu_check: neither torch (with CUDA) nor cupy is installed; install one of them"
        ) from None
    with cupy.cuda.Device(gpu):
        x = cupy.random.standard_normal((8192, 8192), dtype=cupy.float32)
        y = cupy.random.standard_normal((8192, 8192), dtype=cupy.float32)

    def run_cupy(seconds: float) -> int:
        n, end = 0, time.monotonic() + seconds
        with cupy.cuda.Device(gpu):
            while time.monotonic() < end:
                for _ in range(5):
                    cupy.matmul(x, y)
                cupy.cuda.runtime.deviceSynchronize()
                n += 5
        return n

    return f"cupy {cupy.__version__} (float32)", run_cupy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", type=int, default=0, help="NVML index of the GPU")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle phase")
    parser.add_argument("--load", type=float, default=30.0, help="seconds of matmul load")
    parser.add_argument("--power-interval", type=float, default=0.1, help="seconds")
    parser.add_argument("--write", action="store_true", help="write benchmarks/RESULTS.md")
    args = parser.parse_args()

    from ecoq.errors import MeterUnavailable
    from ecoq.meters.nvml import NvmlMeter, load_nvml

    try:
        nvml = load_nvml()
        counter = NvmlMeter(args.gpu, nvml=nvml)
        power = NvmlMeter(args.gpu, nvml=nvml, counter=False, power_interval_s=args.power_interval)
    except MeterUnavailable as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    library, load = matmul_loop(args.gpu)
    load(1.0)  # warm-up: kernels chosen and loaded before anything is measured
    time.sleep(2.0)  # let the GPU settle
    rows = []
    for phase, seconds in (("idle", args.idle), ("matmul", args.load)):
        c0, p0, t0 = counter.energy_j(), power.energy_j(), time.monotonic()
        if phase == "matmul":
            products = load(seconds)
        else:
            time.sleep(seconds)
            products = 0
        c1, p1, t1 = counter.energy_j(), power.energy_j(), time.monotonic()
        rows.append((phase, t1 - t0, c1 - c0, p1 - p0, products))
    counter.close()
    power.close()
    name = counter.description.detail.split(":")[0]
    lines = [
        f"Command: `python benchmarks/gpu_check.py --gpu {args.gpu} --idle {args.idle:g} "
        f"--load {args.load:g} --power-interval {args.power_interval:g}`.",
        f"Machine: {name} (NVML index {args.gpu}), {library}, Python "
        f"{platform.python_version()}, measured {datetime.now(UTC):%Y-%m-%d}.",
        "",
        "| phase | seconds | counter J | power-integration J | mean W (counter) | "
        "difference | bf16 8192² products |",
        "|---|---|---|---|---|---|---|",
    ]
    for phase, secs, c, p, n in rows:
        diff = f"{100 * (p - c) / c:+.1f} %" if c > 0 else "-"
        lines.append(
            f"| {phase} | {secs:.1f} | {c:.1f} | {p:.1f} | {c / secs:.1f} | {diff} | {n} |"
        )
    lines += [
        "",
        "Counter: `nvmlDeviceGetTotalEnergyConsumption` deltas. Power integration: "
        f"`nvmlDeviceGetPowerUsage` every {args.power_interval:g} s in a thread, trapezoid "
        "rule. Difference = (power-integration − counter) / counter.",
    ]
    body = "\n".join(lines)
    print(body)
    if args.write:
        sys.path.insert(0, str(HERE))
        from _results import write_section

        write_section(SECTION, body)


if __name__ == "__main__":
    main()
