"""PyTorch eager against onnxruntime for every shipped backbone, side by side in one run (issue 17).

For each backbone at its usual deployment size, the model's forward (backbone, pooling, neck, L2 normalisation) on
preprocessed inputs at batch 1 and 32: images per second for both runtimes, measured interleaved (one PyTorch call,
one onnxruntime call, ...) so a load change on the shared machine hits both alike, the median of the calls; the
largest difference between their outputs; and memory: the resident-set growth of a fresh process that loads the
model and runs a batch of 32 (peak RSS minus RSS after the imports), one process per backbone and runtime. Decoding
and resizing images are the same code on both paths (``Embedder.encode``'s), so they are left out.

The graph is the one ``deepmetric export`` writes (``trace_to_onnx``: TorchScript exporter, opset 17, all of
onnxruntime's graph optimisations); parity itself is proven by the export and by tests/deploy. Both runtimes get
the same number of intra-op threads (``--threads``, default 1: the 2 shared cores are usually busy, and a spinning
second OpenMP thread then only waits).

    flock /tmp/bench.lock .venv/bin/python bench/runtime.py --output docs/benchmarks/runtime.md
    .venv/bin/python bench/runtime.py --backbones mobilefacenet --budget 1        # quick look
    .venv/bin/python bench/runtime.py --profile mobilefacenet                     # top operators, batch 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RGB = {"channels": 3, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
#: name -> (backbone args, preprocessing or None, embedding_dim, note): each at the size it is deployed at.
BACKBONES = {
    "small_cnn": ({"width": 32}, {"image_size": [32, 32], "channels": 1, "mean": [0.5], "std": [0.5]}, 128,
                  "32x32 grey"),
    "resnet18": ({}, {"image_size": [224, 224], **RGB}, 512, "224x224 RGB"),
    "resnet34": ({}, {"image_size": [224, 224], **RGB}, 512, "224x224 RGB"),
    "resnet50": ({}, {"image_size": [224, 224], **RGB}, 512, "224x224 RGB"),
    "iresnet50": ({}, {"image_size": [112, 112], **RGB}, 512, "112x112 RGB aligned face"),
    "iresnet100": ({}, {"image_size": [112, 112], **RGB}, 512, "112x112 RGB aligned face"),
    "mobilefacenet": ({}, {"image_size": [112, 112], **RGB}, 128, "112x112 RGB aligned face"),
    "mlp": ({"input_dim": 512, "hidden_dims": [1024, 1024]}, None, 128, "512-d vectors"),
}
FACE_BACKBONES = ("mobilefacenet", "iresnet50")
BATCHES = (1, 32)
WHAT_IS_TIMED = (
    "What is timed: the model's forward on preprocessed inputs (backbone, pooling, neck, L2 normalisation), the "
    "median of at least 3 interleaved calls after 1-2 warm-up calls; images per second = batch / median seconds. "
    "Memory: RSS growth in a fresh process (after importing both libraries) for loading the model, and at the peak "
    "of one batch of 32. Random weights (speed does not depend on them); the graphs are those `deepmetric export` "
    "writes (opset 17, dynamic batch, PReLU decomposed).")


def build(name: str):
    import torch

    from deepmetric.models import build_embedder

    args, pre, dim, _ = BACKBONES[name]
    torch.manual_seed(0)
    model = build_embedder({"backbone": {"name": name, "args": args}, "embedding_dim": dim, "preprocessing": pre})
    return model.eval()


def example(name: str, batch: int) -> np.ndarray:
    """Preprocessed-looking inputs of ``name``'s shape: (batch, C, H, W), or (batch, F) for vectors."""
    args, pre = BACKBONES[name][:2]
    shape = (batch, args["input_dim"]) if pre is None else (batch, pre["channels"], *pre["image_size"])
    return np.random.default_rng(batch).standard_normal(shape).astype(np.float32)


def session(path: Path, threads: int, profile: str | None = None):
    import onnxruntime as ort

    from deepmetric.models.onnx_runtime import session_options

    options = session_options(threads)
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def rss_mb(field: str = "VmRSS") -> float:
    """Resident set (``VmRSS``) or its high-water mark (``VmHWM``) in MB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Reset the RSS high-water mark to the current RSS (Linux >= 4.0), so the peak is this run's, not the imports'."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def memory_child(name: str, runtime: str, graph: str, threads: int) -> None:
    """In a fresh process: RSS growth of loading ``name`` for ``runtime`` and running one batch of 32."""
    import onnxruntime  # noqa: F401  (both imported before the baseline, so neither counts)
    import torch

    torch.set_num_threads(threads)
    baseline = rss_mb()
    reset_peak()
    inputs = example(name, 32)
    if runtime == "torch":
        model = build(name)
        loaded = rss_mb()
        with torch.inference_mode():
            model(torch.from_numpy(inputs))
    else:
        sess = session(Path(graph), threads)
        loaded = rss_mb()
        sess.run(None, {"inputs": inputs})
    peak = rss_mb("VmHWM")
    print(json.dumps({"loaded_mb": loaded - baseline, "peak_mb": peak - baseline}))


def measure_memory(name: str, runtime: str, graph: Path, threads: int) -> dict:
    command = [sys.executable, __file__, "--memory-child", name, runtime, str(graph), str(threads)]
    out = subprocess.run(command, capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_pair(model, sess, inputs: np.ndarray, budget: float, max_calls: int) -> tuple[float, float, float, float]:
    """Median seconds per call of PyTorch and onnxruntime, interleaved; the largest output difference and the
    lowest per-row cosine between the two outputs."""
    import torch

    tensor = torch.from_numpy(inputs)
    with torch.inference_mode():
        tick = time.perf_counter()
        reference = model(tensor).numpy()  # also the first warm-up call: allocator, oneDNN primitives, arenas
        output = sess.run(None, {"inputs": inputs})[0]
        if time.perf_counter() - tick < 1.0:  # a second warm-up, unless a call takes seconds (big backbones)
            model(tensor)
            sess.run(None, {"inputs": inputs})
        torch_times, ort_times = [], []
        start = time.perf_counter()
        while len(torch_times) < max_calls and (len(torch_times) < 3 or time.perf_counter() - start < budget):
            tick = time.perf_counter()
            model(tensor)
            torch_times.append(time.perf_counter() - tick)
            tick = time.perf_counter()
            sess.run(None, {"inputs": inputs})
            ort_times.append(time.perf_counter() - tick)
    cosine = float((output.astype(np.float64) * reference).sum(1).min())
    return (float(np.median(torch_times)), float(np.median(ort_times)), float(np.abs(output - reference).max()),
            cosine)


def export_graph(model, folder: Path, *, decompose_prelu: bool = True) -> Path:
    from deepmetric.deploy.export import contract_metadata, trace_to_onnx, with_metadata
    from deepmetric.models.protocol import model_fingerprint

    traced, digest = with_metadata(trace_to_onnx(model, decompose_prelu=decompose_prelu), {})
    data, _ = with_metadata(traced, contract_metadata(dict(model.config), model_stamp=model_fingerprint(model),
                                                      graph_sha256=digest))
    path = folder / ("model.onnx" if decompose_prelu else "model-prelu.onnx")
    path.write_bytes(data)
    return path


def prelu_ablation(names: list[str], threads: int, budget: float, max_calls: int) -> str:
    """Batch 1, PyTorch against onnxruntime on the graph with onnxruntime's own PRelu and on the exported one
    (PReLU decomposed), interleaved per pair: what the decomposition buys."""
    lines = [f"### PReLU: onnxruntime's PRelu kernel against the decomposition (batch 1, {threads} thread(s))", "",
             "| backbone | PyTorch img/s | onnxruntime, PRelu img/s | speed-up | PyTorch img/s | "
             "onnxruntime, decomposed img/s | speed-up |", "|---|---|---|---|---|---|---|"]
    for name in names:
        model = build(name)
        with tempfile.TemporaryDirectory() as folder:
            cells = []
            for decompose in (False, True):
                sess = session(export_graph(model, Path(folder), decompose_prelu=decompose), threads)
                torch_s, ort_s, _, _ = time_pair(model, sess, example(name, 1), budget, max_calls)
                cells += [f"{1 / torch_s:.1f}", f"{1 / ort_s:.1f}", f"**{torch_s / ort_s:.2f}x**"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def profile(name: str, threads: int) -> str:
    """Top operators at batch 1 for both runtimes, as markdown."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.set_num_threads(threads)
    model = build(name)
    inputs = example(name, 1)
    lines = [f"### Profile: {name}, batch 1, {threads} thread(s)", ""]
    with tempfile.TemporaryDirectory() as folder:
        graph = export_graph(model, Path(folder))
        sess = session(graph, threads, profile=str(Path(folder) / "ort"))
        for _ in range(20):
            sess.run(None, {"inputs": inputs})
        trace = json.loads(Path(sess.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"].get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + event["dur"] / 1e3 / 20
    lines += ["onnxruntime, ms per call by operator:", "", "| operator | ms |", "|---|---|"]
    lines += [f"| {op} | {ms:.2f} |" for op, ms in sorted(totals.items(), key=lambda kv: -kv[1])[:8]]
    tensor = torch.from_numpy(inputs)
    with torch.inference_mode():
        for _ in range(3):
            model(tensor)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(20):
                model(tensor)
    lines += ["", "PyTorch eager, ms per call by operator:", "", "| operator | ms | calls |", "|---|---|---|"]
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]
    lines += [f"| {e.key} | {e.self_cpu_time_total / 1e3 / 20:.2f} | {e.count // 20} |" for e in events]
    return "\n".join(lines) + "\n"


def cpu_line() -> str:
    model = "unknown CPU"
    flags: set[str] = set()
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    features = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    return f"{model}, {os.cpu_count()} cores visible, flags: {', '.join(features) or 'none of avx2/avx512'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="*", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for both runtimes")
    parser.add_argument("--budget", type=float, default=4.0, help="seconds of timing per backbone and batch size")
    parser.add_argument("--max-calls", type=int, default=200)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 rows of the face backbones")
    parser.add_argument("--profile", nargs="*", default=None, help="also profile these backbones at batch 1 "
                        "(default with --output: the face backbones that miss 1.5x)")
    parser.add_argument("--prelu-ablation", action="store_true", help="only compare onnxruntime's PRelu with the "
                        "exported decomposition at batch 1 for --backbones (default: the face backbones)")
    parser.add_argument("--output", type=Path, help="write the markdown table here")
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        name, runtime, graph, threads = args.memory_child
        memory_child(name, runtime, graph, int(threads))
        return
    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)
    if args.prelu_ablation:
        names = args.backbones if args.backbones != list(BACKBONES) else list(FACE_BACKBONES)
        print(f"load average {os.getloadavg()[0]:.1f}; {cpu_line()}")
        print(prelu_ablation(names, args.threads, args.budget, args.max_calls))
        return
    load = os.getloadavg()[0]
    rows, int8_rows = [], []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
        for name in args.backbones:
            model = build(name)
            folder = Path(tmp) / name
            folder.mkdir()
            graph = export_graph(model, folder)
            sess = session(graph, args.threads)
            for batch in BATCHES:
                # A time budget, not a call count: big backbones get fewer calls (at least 3).
                torch_s, ort_s, diff, _ = time_pair(model, sess, example(name, batch), args.budget, args.max_calls)
                rows.append({"backbone": name, "batch": batch, "torch_ips": batch / torch_s,
                             "ort_ips": batch / ort_s, "speedup": torch_s / ort_s, "max_abs_diff": diff})
                print(json.dumps(rows[-1]), flush=True)
            if name in FACE_BACKBONES and not args.no_int8:
                from deepmetric.deploy.quantize import quantize_dynamic_int8

                int8_graph = folder / "int8.onnx"
                int8_graph.write_bytes(quantize_dynamic_int8(graph.read_bytes()))
                int8_sess = session(int8_graph, args.threads)
                for batch in BATCHES:
                    torch_s, ort_s, _, cosine = time_pair(model, int8_sess, example(name, batch), args.budget,
                                                          args.max_calls)
                    int8_rows.append({"backbone": name, "batch": batch, "torch_ips": batch / torch_s,
                                      "int8_ips": batch / ort_s, "speedup": torch_s / ort_s, "min_cosine": cosine})
                    print(json.dumps(int8_rows[-1]), flush=True)
                del int8_sess
            if not args.no_memory:
                memory = {runtime: measure_memory(name, runtime, graph, args.threads) for runtime in ("torch", "ort")}
                for row in rows:
                    if row["backbone"] == name:
                        row["memory"] = memory
                print(json.dumps({name: memory}), flush=True)
            del sess, model
    elapsed = time.time() - started
    slow_faces = [r["backbone"] for r in rows if r["backbone"] in FACE_BACKBONES and r["batch"] == 1
                  and r["speedup"] < 1.5]
    to_profile = args.profile if args.profile is not None else (slow_faces if args.output else [])
    profiles = [profile(name, args.threads) for name in to_profile]
    text = report(rows, threads=args.threads, load=load, elapsed=elapsed, ort_version=onnxruntime.__version__,
                  torch_version=torch.__version__, profiles=profiles, int8_rows=int8_rows)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)


def report(rows, *, threads, load, elapsed, ort_version, torch_version, profiles, int8_rows=()) -> str:
    lines = ["# Runtime: PyTorch eager vs onnxruntime (issue 17)", "",
             f"Command: `flock /tmp/bench.lock .venv/bin/python bench/runtime.py --output docs/benchmarks/runtime.md`"
             f" ({elapsed / 60:.1f} min).", "",
             f"Machine: {cpu_line()}; {platform.python_implementation()} {platform.python_version()}, torch "
             f"{torch_version} (CPU), onnxruntime {ort_version} (CPUExecutionProvider). Load average at the start "
             f"{load:.1f} (a machine shared with other jobs). Threads: **{threads} intra-op thread(s) for both "
             f"runtimes** (torch.set_num_threads and onnxruntime's intra_op_num_threads; 1 inter-op thread). "
             f"Float32 everywhere; neither runtime was asked for bf16 or AVX-512 kernels explicitly (both pick their "
             f"own kernels for this CPU).", "",
             WHAT_IS_TIMED, "",
             "| backbone | input | batch | PyTorch img/s | onnxruntime img/s | speed-up | max abs diff | "
             "memory load/peak MB (PyTorch) | memory load/peak MB (onnxruntime) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        memory = row.get("memory")
        mem_t = f"{memory['torch']['loaded_mb']:.0f} / {memory['torch']['peak_mb']:.0f}" if memory else "-"
        mem_o = f"{memory['ort']['loaded_mb']:.0f} / {memory['ort']['peak_mb']:.0f}" if memory else "-"
        lines.append(f"| {row['backbone']} | {BACKBONES[row['backbone']][3]} | {row['batch']} | "
                     f"{row['torch_ips']:.1f} | {row['ort_ips']:.1f} | **{row['speedup']:.2f}x** | "
                     f"{row['max_abs_diff']:.1e} | {mem_t} | {mem_o} |")
    faces = [r for r in rows if r["backbone"] in FACE_BACKBONES and r["batch"] == 1]
    if faces:
        lines += ["", "Target (onnxruntime >= 1.5x PyTorch at batch 1 for the face backbones): " + "; ".join(
            f"{r['backbone']} {r['speedup']:.2f}x ({'met' if r['speedup'] >= 1.5 else 'missed'})" for r in faces)
            + "."]
    if int8_rows:
        lines += ["", "Optional int8 dynamic quantisation (`deepmetric export --quantize int8`: int8 per-channel "
                  "weights, "
                  "activations quantised per batch; never on by default), same threads, interleaved with PyTorch "
                  "float32. The cosine is the lowest per-row cosine to PyTorch on the timed (random) batch; the export "
                  "reports it on real images, with the MAP@R loss.", "",
                  "| backbone | batch | PyTorch img/s | onnxruntime int8 img/s | speed-up | lowest cosine |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['backbone']} | {r['batch']} | {r['torch_ips']:.1f} | {r['int8_ips']:.1f} | "
                  f"{r['speedup']:.2f}x | {r['min_cosine']:.4f} |" for r in int8_rows]
    return "\n".join(lines) + "\n" + ("\n" + "\n".join(profiles) if profiles else "")


if __name__ == "__main__":
    main()
