"""PartialFC benchmark: the class centres sharded over 2 CPU processes (gloo, sample rate r) against the
single-process full head, same classes, same global batch, ArcFace margin, one training step each
(forward + backward + SGD update of the centres).

Each side runs in fresh processes, one after the other: the full head in one process with 2 torch threads
(the whole machine), the sharded head in 2 processes with 1 thread each. Per process: the median step
time, its CPU time, and the peak resident memory (Linux VmHWM, reset after the imports by
/proc/self/clear_refs) in total and above the resident memory before the head was built. The parent
prints the ratios and writes docs/benchmarks/partial_fc.md.

    flock /tmp/bench.lock .venv/bin/python bench/partial_fc.py                    # 2M classes (~3 min)
    flock /tmp/bench.lock .venv/bin/python bench/partial_fc.py --classes 200000 --no-docs   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks" / "partial_fc.md"


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def worker(kind: str, rank: int, world_size: int, args: argparse.Namespace, port: int) -> dict:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from deepmetric.losses.heads import ClassCentreHead
    from deepmetric.losses.margins import arc_margin
    from deepmetric.losses.partial_fc import ShardedClassCentreHead

    torch.set_num_threads(2 if kind == "full" else 1)
    if kind == "sharded":
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    _reset_peak()
    baseline = _status_mb("VmRSS")
    torch.manual_seed(0)
    if kind == "full":
        head = ClassCentreHead(embedding_dim=args.dim, num_classes=args.classes)
        local_batch = args.batch
    else:
        head = ShardedClassCentreHead(embedding_dim=args.dim, num_classes=args.classes, sample_rate=args.rate)
        local_batch = args.batch // world_size
    head.train()
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(1 + rank)
    times, cpu_times = [], []
    for step in range(args.steps + 1):
        embeddings = F.normalize(torch.randn(local_batch, args.dim, generator=generator), dim=1).requires_grad_()
        labels = torch.randint(0, args.classes, (local_batch,), generator=generator)
        if kind == "sharded":
            dist.barrier()
        start, cpu_start = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=False)
        losses = head(embeddings, labels, row_scale=64.0, margin=lambda cos, _: arc_margin(cos, 0.5)).losses
        losses.mean().backward()
        optimizer.step()
        if kind == "sharded":
            dist.barrier()
        if step:  # the first step warms up (allocations, the gradient buffer)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    result = {"seconds": statistics.median(times), "cpu_seconds": statistics.median(cpu_times),
              "peak_mb": _status_mb("VmHWM"), "head_peak_mb": _status_mb("VmHWM") - baseline,
              "loss": float(losses.mean()), "rows": int(head.weight.shape[0])}
    if kind == "sharded":
        dist.destroy_process_group()
    return result


def _spawned(rank: int, world_size: int, args: argparse.Namespace, port: int, output: str) -> None:
    result = worker("sharded", rank, world_size, args, port)
    Path(f"{output}.{rank}").write_text(json.dumps(result))


def run_side(kind: str, args: argparse.Namespace) -> list[dict]:
    """Fresh processes for one side; their results (one per process)."""
    command = [sys.executable, __file__, "--worker", kind, "--classes", str(args.classes), "--dim", str(args.dim),
               "--batch", str(args.batch), "--rate", str(args.rate), "--steps", str(args.steps)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"the {kind} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker_main(kind: str, args: argparse.Namespace) -> None:
    if kind == "full":
        results = [worker("full", 0, 1, args, 0)]
    else:
        import tempfile

        import torch.multiprocessing as mp

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        with tempfile.TemporaryDirectory() as folder:
            output = os.path.join(folder, "result")
            mp.spawn(_spawned, args=(args.processes, args, port, output), nprocs=args.processes, join=True)
            results = [json.loads(Path(f"{output}.{rank}").read_text()) for rank in range(args.processes)]
    print(json.dumps(results))


def machine() -> str:
    import torch

    model = "unknown CPU"
    flags = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    simd = ", ".join(name for name, flag in (("AVX-512", " avx512f"), ("AVX-512 bf16", " avx512_bf16"))
                     if flag in flags) or "no AVX-512"
    capability = torch.backends.cpu.get_cpu_capability()
    return (f"{model}, {os.cpu_count()} cores ({simd}; torch uses {capability}, float32 throughout), "
            f"{platform.system()} {platform.release()}, torch {torch.__version__}")


def arithmetic(dim: int, rate: float, batch: int) -> list[str]:
    """The memory and compute per process on paper, for 10M and 100M identities."""
    lines = ["| identities | processes | centres per process | weight + grad per process (fp32) | "
             "with SGD momentum | kept centres per step per process | GEMM work per step per process |",
             "|---|---|---|---|---|---|---|"]
    for identities in (10_000_000, 100_000_000):
        for processes in (8, 16, 64, 128):
            local = identities / processes
            weight_gb = local * dim * 4 / 1e9
            kept = rate * local
            flops = 4 * 2 * kept * batch * dim  # four products of (kept x D) by (D x B)
            lines.append(f"| {identities / 1e6:.0f}M | {processes} | {local / 1e6:.2f}M | {2 * weight_gb:.2f} GB | "
                         f"{3 * weight_gb:.2f} GB | {kept / 1e3:.0f}k | {flops / 1e9:.0f} GFLOP |")
    return lines


def write_docs(args: argparse.Namespace, full: dict, sharded: list[dict], description: str) -> None:
    slowest = max(sharded, key=lambda result: result["seconds"])
    largest = max(sharded, key=lambda result: result["peak_mb"])
    speedup = full["seconds"] / slowest["seconds"]
    cpu_speedup = full["cpu_seconds"] / max(result["cpu_seconds"] for result in sharded)
    memory = largest["peak_mb"] / full["peak_mb"]
    head_memory = max(result["head_peak_mb"] for result in sharded) / full["head_peak_mb"]
    rows = [
        "| head | processes x threads | step (median) | CPU per step | peak RSS per process | "
        "peak above pre-head RSS |",
        "|---|---|---|---|---|---|",
        f"| full (`ClassCentreHead`) | 1 x 2 | {full['seconds']:.2f} s | {full['cpu_seconds']:.2f} s | "
        f"{full['peak_mb']:.0f} MB | {full['head_peak_mb']:.0f} MB |",
    ]
    for rank, result in enumerate(sharded):
        rows.append(f"| sharded, r = {args.rate:g}, process {rank} | {len(sharded)} x 1 | {result['seconds']:.2f} s | "
                    f"{result['cpu_seconds']:.2f} s | {result['peak_mb']:.0f} MB | {result['head_peak_mb']:.0f} MB |")
    flops = 4 * 2 * args.classes * args.batch * args.dim
    fixed = largest["peak_mb"] - largest["head_peak_mb"]
    speed_met = "met" if speedup >= 4 else "NOT met"
    memory_met = "met" if memory <= 0.5 else "NOT met"
    text = [
        "# PartialFC: class centres sharded across processes",
        "",
        f"Generated by `bench/partial_fc.py` ({args.classes:,} classes, D = {args.dim}, global batch {args.batch} "
        f"= {args.batch // len(sharded)} per process, ArcFace m = 0.5, s = 64; a step is forward + backward + "
        f"SGD update of the centres; median of {args.steps} steps after one warm-up).",
        "",
        f"Machine: {description}. Load average at the start: {args.load}.",
        "",
        *rows,
        "",
        f"- Step time: the full head is **{speedup:.1f}x** slower than the slowest sharded process "
        f"(CPU time {cpu_speedup:.1f}x); target >= 4x: {speed_met}.",
        f"- Memory per process: sharded / full = **{memory:.2f}** of the peak RSS "
        f"({head_memory:.2f} counting only what the head adds above the process's resident memory before it "
        f"was built: torch and the gloo transport cost the same fixed ~{fixed:.0f} MB "
        f"in every process); target <= 1/2: {memory_met}.",
        f"- Measured rate: the full head does {flops / 1e9:.0f} GFLOP per step (four products of C x D by D x B), "
        f"{flops / 1e9 / full['seconds']:.0f} GFLOP/s on 2 threads here.",
        "- What a sharded process holds: its C / W centres and their gradient (dense; rows outside the step's "
        "sample are zero, as in the single-process sampled head), the kept rows' copies for one chunk at a time, "
        "and the gathered global batch. Both sides use the one chunked cross-entropy of "
        "`deepmetric/losses/heads.py`; the sharded one adds three all-reduces of B floats per step and one "
        "all-gather of the embeddings (and a sum of their gradient).",
        "",
        "## On paper: 10M and 100M identities",
        "",
        f"D = {args.dim}, r = {args.rate:g}, global batch {args.batch}, float32. A process holds C / W centres; "
        "with plain SGD it needs the weights and their gradient (2 x 4 D bytes per centre), with momentum one "
        "more copy, with Adam two more. The work per step per process is four (kept x D) by (D x B) products "
        "(forward, and in the backward the recomputed logits, the input and the centre gradients), "
        "8 r (C / W) B D floating-point operations; the traffic per step is one all-gather of B x (D + 2) "
        "floats plus all-reduces of 3B floats, independent of C.",
        "",
        *arithmetic(args.dim, args.rate, args.batch),
        "",
        "So 10M identities fit on one 8-GPU machine (1.25M centres, 1.3 GB with SGD per GPU), as in An et al. "
        "(2021); 100M identities need about 64 processes (e.g. 8 machines x 8 GPUs: 1.56M centres, 1.6 GB per "
        "GPU with SGD, 2.4 GB with momentum), and the step time per process stays that of 156k kept centres. "
        "On CPUs, this machine's measured rate above (the full head's FLOP over its step time) sets the time "
        "per step: the sampled GEMM work divided by that rate.",
        "",
    ]
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text("\n".join(text))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=2_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=512, help="global batch (split evenly over the processes)")
    parser.add_argument("--rate", type=float, default=0.1, help="sample rate r of the sharded head")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side (after one warm-up)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--no-docs", action="store_true", help="print only; do not write the docs page")
    parser.add_argument("--worker", choices=("full", "sharded"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.worker, args)
        return
    args.load = "/".join(f"{value:.1f}" for value in os.getloadavg())
    description = machine()
    print(f"machine: {description}; load {args.load}", flush=True)
    sharded = run_side("sharded", args)
    print("sharded:", json.dumps(sharded), flush=True)
    full = run_side("full", args)[0]
    print("full:", json.dumps(full), flush=True)
    slowest = max(result["seconds"] for result in sharded)
    print(f"step: full {full['seconds']:.2f} s, sharded {slowest:.2f} s -> {full['seconds'] / slowest:.1f}x; "
          f"peak RSS per process: full {full['peak_mb']:.0f} MB, sharded "
          f"{max(result['peak_mb'] for result in sharded):.0f} MB")
    if not args.no_docs:
        write_docs(args, full, sharded, description)
        print(f"wrote {DOCS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
