"""Loss benchmark: deepmetric against pytorch-metric-learning 2.9 on identical inputs, forward + backward.

Memory: each (case, implementation) runs one step in a fresh subprocess, and the peak resident memory of
that step above the resident memory just before it is recorded (Linux VmHWM, reset through
/proc/self/clear_refs). Time: one more subprocess runs both implementations' steps interleaved (2 torch
threads) and reports the median of each, so a shared machine's changing load hits both alike. The parent
prints a table of the ratios and writes it to docs/benchmarks/losses.md. An address-space limit per
subprocess turns a runaway allocation (pytorch-metric-learning at B=1024 wants 12.8 GB) into a recorded
failure instead of swapping a shared machine.

    .venv/bin/python bench/losses.py                    # everything (classification rows last; 20-40 min)
    .venv/bin/python bench/losses.py --quick            # 2 repeats, 100k classes, no docs written
    .venv/bin/python bench/losses.py --only ntxent,lifted  # re-runs those rows, keeps the others in the docs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES_PER_CLASS = 4
MILLION = 1_000_000


@dataclass(frozen=True)
class Case:
    """One benchmark row. ``target`` is (minimum speed-up, maximum memory ratio ours/theirs)."""

    name: str
    batch_size: int
    dim: int
    target: tuple[float, float | None]
    num_classes: int | None = None  # classification rows: classes of the head
    memory_limit_gb: float = 6.0
    ours: dict = field(default_factory=dict)
    description: str = ""


CASES = [
    Case("semi_hard_triplet", 1024, 512, (10.0, 0.2), description="semi-hard miner + triplet (m=0.2)"),
    Case("batch_hard_triplet", 1024, 512, (1.0, None), description="batch-hard miner + triplet (m=0.2)"),
    Case("contrastive", 1024, 512, (1.0, None), description="all pairs, margins 0 / 1"),
    Case("npair", 1024, 512, (1.0, None), description="one pair per class"),
    Case("multi_similarity", 1024, 512, (1.0, None), description="all pairs, alpha 2, beta 50, base 0.5"),
    Case("multi_similarity_mined", 1024, 512, (1.0, None), description="with pair mining, epsilon 0.1"),
    Case("ntxent_256", 256, 512, (10.0, 0.1), description="NT-Xent, temperature 0.1"),
    Case("lifted_256", 256, 512, (10.0, 0.1), description="lifted structure (Song), margin 1"),
    Case("ntxent_1024", 1024, 512, (1.0, None), description="NT-Xent; target: ours < 1 GB"),
    Case("lifted_1024", 1024, 512, (1.0, None), description="lifted structure; target: ours < 1 GB"),
    # Classification heads (built by registry key when present); 1M x 128 centres. Run last: PML needs
    # 6-15 s and 4-9 GB per step.
    Case("arcface", 256, 128, (3.0, 1 / 3), MILLION, 16.0, {"margin": 0.5, "scale": 64.0}, "m=0.5 rad, s=64"),
    Case("cosface", 256, 128, (3.0, 1 / 3), MILLION, 16.0, {"margin": 0.35, "scale": 64.0}, "m=0.35, s=64"),
    Case("sphereface", 256, 128, (3.0, 1 / 3), MILLION, 16.0, {"margin": 4}, "m=4"),
    Case("normalized_softmax", 256, 128, (3.0, 1 / 3), MILLION, 16.0, {"scale": 20.0}, "s=20 (PML T=0.05)"),
    Case("subcenter_arcface", 256, 128, (3.0, 1 / 3), MILLION, 20.0,
         {"margin": 0.5, "scale": 64.0, "num_subcenters": 3}, "K=3, m=0.5 rad, s=64"),
]
CASES_BY_NAME = {case.name: case for case in CASES}


# ----------------------------------------------------------------------------------------------- worker

def _inputs(case: Case, num_classes: int | None):
    import torch

    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(case.batch_size, case.dim, generator=generator)
    if num_classes is None:
        labels = torch.arange(case.batch_size // SAMPLES_PER_CLASS).repeat_interleave(SAMPLES_PER_CLASS)
    else:
        labels = torch.randint(num_classes, (case.batch_size,), generator=generator)
    return embeddings, labels


def _ours_step(case: Case, num_classes: int | None):
    """A function running one forward + backward of deepmetric's implementation."""
    from deepmetric import registry
    from deepmetric.losses import (
        ContrastiveLoss,
        LiftedStructureLoss,
        MultiSimilarityLoss,
        NPairLoss,
        NTXentLoss,
        TripletLoss,
    )

    miner = None
    if case.name == "semi_hard_triplet":
        loss, miner = TripletLoss(margin=0.2), registry.build({"name": "semi_hard", "args": {"margin": 0.2}}, "miner")
    elif case.name == "batch_hard_triplet":
        loss, miner = TripletLoss(margin=0.2), registry.build({"name": "batch_hard", "args": {}}, "miner")
    elif case.name == "contrastive":
        loss = ContrastiveLoss(pos_margin=0.0, neg_margin=1.0)
    elif case.name == "npair":
        loss = NPairLoss(l2_reg=0.0, distance="cosine")
    elif case.name.startswith("multi_similarity"):
        loss = MultiSimilarityLoss(mining_epsilon=0.1 if case.name.endswith("mined") else None)
    elif case.name.startswith("ntxent"):
        loss = NTXentLoss(temperature=0.1)
    elif case.name.startswith("lifted"):
        loss = LiftedStructureLoss(form="song", neg_margin=1.0)
    else:
        cls = registry.get(case.name, "loss")
        accepted = registry.accepted_args(cls)
        args = {key: value for key, value in case.ours.items() if key in accepted}
        loss = registry.build({"name": case.name, "args": {**args, "embedding_dim": case.dim,
                                                           "num_classes": num_classes}}, "loss")

    def step(embeddings, labels):
        mined = miner(embeddings, labels) if miner is not None else None
        loss(embeddings, labels, mined=mined).backward()

    return step, loss


def _pml_step(case: Case, num_classes: int | None):
    from pytorch_metric_learning import losses, miners

    miner = None
    if case.name == "semi_hard_triplet":
        loss = losses.TripletMarginLoss(margin=0.2)
        miner = miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")
    elif case.name == "batch_hard_triplet":
        loss, miner = losses.TripletMarginLoss(margin=0.2), miners.BatchHardMiner()
    elif case.name == "contrastive":
        loss = losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0)
    elif case.name == "npair":
        loss = losses.NPairsLoss()
    elif case.name.startswith("multi_similarity"):
        loss = losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)
        if case.name.endswith("mined"):
            miner = miners.MultiSimilarityMiner(epsilon=0.1)
    elif case.name.startswith("ntxent"):
        loss = losses.NTXentLoss(temperature=0.1)
    elif case.name.startswith("lifted"):
        loss = losses.LiftedStructureLoss(neg_margin=1.0)
    else:
        degrees = 28.6479  # PML takes angular margins in degrees: 0.5 rad
        make = {
            "arcface": lambda: losses.ArcFaceLoss(num_classes, case.dim, margin=degrees, scale=64),
            "cosface": lambda: losses.CosFaceLoss(num_classes, case.dim, margin=0.35, scale=64),
            "sphereface": lambda: losses.SphereFaceLoss(num_classes, case.dim, margin=4),
            "normalized_softmax": lambda: losses.NormalizedSoftmaxLoss(num_classes, case.dim, temperature=0.05),
            "subcenter_arcface": lambda: losses.SubCenterArcFaceLoss(num_classes=num_classes, embedding_size=case.dim,
                                                                     margin=degrees, scale=64, sub_centers=3),
        }
        loss = make[case.name]()

    def step(embeddings, labels):
        mined = miner(embeddings, labels) if miner is not None else None
        loss(embeddings, labels, mined).backward()

    return step, loss


def _rss_kb(field_name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _prepare(case_name: str, implementations: list[str], num_classes: int | None):
    import torch

    torch.set_num_threads(2)
    case = CASES_BY_NAME[case_name]
    embeddings, labels = _inputs(case, num_classes)
    embeddings.requires_grad_(True)
    steps = {name: (_ours_step if name == "ours" else _pml_step)(case, num_classes) for name in implementations}
    return embeddings, labels, steps


def _run_step(step_and_module, embeddings, labels) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one forward + backward."""
    step, module = step_and_module
    embeddings.grad = None
    module.zero_grad(set_to_none=True)
    wall, cpu = time.perf_counter(), time.process_time()
    step(embeddings, labels)
    return time.perf_counter() - wall, time.process_time() - cpu


def memory_worker(case_name: str, implementation: str, num_classes: int | None) -> dict:
    """Peak resident memory of one step above the resident memory just before it."""
    import gc

    embeddings, labels, steps = _prepare(case_name, [implementation], num_classes)
    gc.collect()
    before = _rss_kb("VmRSS")
    exact_peak = _reset_peak_rss()
    try:
        _run_step(steps[implementation], embeddings, labels)
    except RuntimeError as error:  # allocation failures under the address-space limit
        return {"error": str(error).splitlines()[0][:160]}
    peak = _rss_kb("VmHWM") if exact_peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mb": max(peak - before, 0) / 1024, "exact_peak": exact_peak}


def timing_worker(case_name: str, implementations: list[str], repeats: int, num_classes: int | None) -> dict:
    """Median wall and CPU time of each implementation, steps interleaved so both see the same load."""
    embeddings, labels, steps = _prepare(case_name, implementations, num_classes)
    for name in implementations:  # warm-up: first-call allocations and lazy initialisation
        _run_step(steps[name], embeddings, labels)
    times = {name: [] for name in implementations}
    for _ in range(repeats):
        for name in implementations:
            times[name].append(_run_step(steps[name], embeddings, labels))
    return {name: {"seconds": statistics.median(wall for wall, _ in values),
                   "cpu_seconds": statistics.median(cpu for _, cpu in values)} for name, values in times.items()}


# ----------------------------------------------------------------------------------------------- parent

def _subprocess(arguments: list[str], memory_limit_gb: float) -> dict:
    command = [sys.executable, __file__, *arguments]
    limit = int(memory_limit_gb * 1024 ** 3)

    def limit_address_space():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    # Passive OpenMP waiting (for both implementations): on a shared, oversubscribed machine a spinning
    # thread waits for its descheduled sibling at every parallel op, which measures the other tenants.
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "PYTHONPATH": str(REPO / "src"),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=limit_address_space, env=env,
                          timeout=3600, check=False)  # a failed run is reported from its output below
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {tail[:160]}"}
    return json.loads(lines[-1])


def measure(case: Case, repeats: int, num_classes: int | None) -> tuple[dict, dict]:
    """Memory of each implementation in its own fresh process, then both timed side by side in one."""
    extra = [] if num_classes is None else ["--num-classes", str(num_classes)]
    results = {name: _subprocess(["--memory-worker", case.name, name, *extra], case.memory_limit_gb)
               for name in ("ours", "pml")}
    timed = [name for name in ("ours", "pml") if "error" not in results[name]]
    if timed:
        times = _subprocess(["--timing-worker", case.name, ",".join(timed), "--repeats", str(repeats), *extra],
                            case.memory_limit_gb * 1.5)
        for name in timed:
            results[name] = {"error": "timing run: " + times["error"]} if "error" in times else \
                {**results[name], **times[name]}
    return results["ours"], results["pml"]


def machine_description() -> str:
    import torch

    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import pytorch_metric_learning
        pml_version = pytorch_metric_learning.__version__
    except ImportError:
        pml_version = "not installed"
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3
    return (f"{model}, {os.cpu_count()} cores, {memory_gb:.0f} GiB RAM, {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, torch {torch.__version__}, pytorch-metric-learning {pml_version}; "
            f"2 torch threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}")


def _load() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


HEADER = ("| case | B x D | setting | ours wall | PML wall | ours CPU | PML CPU | ours peak | PML peak "
          "| speed-up wall / CPU | memory ours/PML | target | met |")


def table_row(case: Case, shape: str, ours: dict, theirs: dict) -> str:
    """One markdown row. Speed-ups are PML / ours; 'met' is judged on wall time and, separately, on CPU
    time (on a loaded shared machine the wall clock mostly measures the other tenants)."""
    def cell(result: dict, key: str, unit: str) -> str:
        if "error" in result:
            return "fails"
        return f"{result[key] * 1000:.0f} ms" if unit == "ms" else f"{result[key]:.0f} MB"

    min_speedup, max_memory = case.target
    only_memory_cap = case.name.split("_")[0] in ("ntxent", "lifted") and case.name.endswith("_1024")
    target = "ours < 1 GB" if only_memory_cap else \
        f">= {min_speedup:g}x" + ("" if max_memory is None else f", <= 1/{round(1 / max_memory)} memory")
    speedups = memory = "-"
    met = "ours failed" if "error" in ours else "PML failed"
    if "error" not in ours and "error" not in theirs:
        wall, cpu = theirs["seconds"] / ours["seconds"], theirs["cpu_seconds"] / ours["cpu_seconds"]
        ratio = ours["peak_mb"] / max(theirs["peak_mb"], 1e-9)
        speedups = f"{wall:.1f}x / {cpu:.1f}x"
        memory = f"1/{1 / ratio:.1f}" if 0 < ratio < 1 else f"{ratio:.2f}"
        memory_ok = max_memory is None or ratio <= max_memory
        met = ("yes" if wall >= min_speedup and memory_ok else
               "CPU time only" if cpu >= min_speedup and memory_ok else "NO")
    if only_memory_cap and "error" not in ours:
        met = "yes" if ours["peak_mb"] < 1024 else "NO"
    cells = [case.name, shape, case.description, cell(ours, "seconds", "ms"), cell(theirs, "seconds", "ms"),
             cell(ours, "cpu_seconds", "ms"), cell(theirs, "cpu_seconds", "ms"), cell(ours, "peak_mb", "MB"),
             cell(theirs, "peak_mb", "MB"), speedups, memory, target, met]
    return "| " + " | ".join(cells) + " |"


def _merge_previous(output: Path, cases: list[Case], rows: list[str], notes: list[str]) -> tuple[list, list]:
    """With ``--only``, keep the rows (and notes) of the cases not re-run from the existing file, in the
    order of CASES, so that a partial run updates the table instead of replacing it."""
    if not output.exists():
        return rows, notes
    rerun = {case.name for case in cases}
    by_name = {row.split("|")[1].strip(): row for row in rows}
    old_notes = []
    for line in output.read_text().splitlines():
        name = line.split("|")[1].strip() if line.startswith("| ") else ""
        if name in CASES_BY_NAME and name not in rerun:
            by_name[name] = line
        elif line.startswith("- ") and line[2:].split(",")[0].split(":")[0] not in rerun:
            old_notes.append(line)
    return [by_name[case.name] for case in CASES if case.name in by_name], old_notes + notes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated substrings of case names, e.g. ntxent,lifted")
    parser.add_argument("--quick", action="store_true", help="2 repeats, 100k classes, docs not written")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per case (default 7; 1M classes: 2)")
    parser.add_argument("--output", default=None, help="markdown file (default docs/benchmarks/losses.md)")
    parser.add_argument("--memory-worker", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    parser.add_argument("--timing-worker", nargs=2, metavar=("CASE", "IMPLS"), help=argparse.SUPPRESS)
    parser.add_argument("--num-classes", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_worker:
        print(json.dumps(memory_worker(*args.memory_worker, args.num_classes)), flush=True)
        return
    if args.timing_worker:
        case_name, implementations = args.timing_worker
        print(json.dumps(timing_worker(case_name, implementations.split(","), args.repeats, args.num_classes)),
              flush=True)
        return

    sys.path.insert(0, str(REPO / "src"))
    from deepmetric import registry

    wanted = [token for token in args.only.split(",") if token]
    cases = [case for case in CASES if not wanted or any(token in case.name for token in wanted)]
    rows, notes = [], []
    load_before = _load()
    output = None
    if not (args.quick and args.output is None):
        output = Path(args.output) if args.output else REPO / "docs" / "benchmarks" / "losses.md"
    print(machine_description())
    print(f"load average (1/5/15 min) at start: {load_before}")
    print(HEADER, flush=True)
    for case in cases:
        num_classes = None
        if case.num_classes is not None:
            if case.name not in registry.names("loss"):
                notes.append(f"- {case.name}: skipped, registry key not present yet.")
                print(notes[-1], flush=True)
                continue
            num_classes = 100_000 if args.quick else case.num_classes
        repeats = args.repeats or (2 if args.quick or num_classes else 7)
        ours, theirs = measure(case, repeats, num_classes)
        shape = f"{case.batch_size} x {case.dim}" + (f", C = {num_classes:,}" if num_classes else "")
        rows.append(table_row(case, shape, ours, theirs))
        print(rows[-1], flush=True)
        for label, result in (("ours", ours), ("PML", theirs)):
            if "error" in result:
                notes.append(f"- {case.name}, {label} failed: `{result['error']}`")
                print(notes[-1], flush=True)
        if output is not None:  # after every row, so an interrupted run keeps what it measured
            write_table(output, rows, notes, [c for c in cases if c.name in {r.split("|")[1].strip() for r in rows}],
                        partial=bool(wanted) or case is not cases[-1], load_before=load_before)
    print(f"load average at end: {_load()}")
    if output is not None:
        print(f"wrote {output}")


def write_table(output: Path, rows: list[str], notes: list[str], measured: list[Case], *, partial: bool,
                load_before: str) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    if partial:
        rows, notes = _merge_previous(output, measured, rows, notes)
    text = "\n".join([
        "# Loss benchmark: deepmetric vs pytorch-metric-learning",
        "",
        f"Machine: {machine_description()}. Load average (1/5/15 min) {load_before} at the start of the run "
        f"and {_load()} when this file was written (the machine is shared; on 2 cores a load above 2 means "
        "the wall clock mostly measures waiting, so the process CPU time is shown too).",
        "",
        "Command: `.venv/bin/python bench/losses.py` (rows may come from several `--only` runs; the load "
        "average is that of the last run).",
        "",
        "Forward + backward on identical inputs: random normal embeddings with P x K labels (K = 4) or, for "
        "the classification heads, labels uniform over C classes. Time: median of interleaved steps (ours, "
        "PML, ours, ...) in one process after a warm-up; CPU = process CPU time of the step. Peak: resident "
        "memory high-water mark of one step above the memory just before it, each implementation in a fresh "
        "process. Speed-up = PML / ours. PML's semi-hard miner returns every semi-hard triplet, ours "
        "(FaceNet) the closest semi-hard negative of each positive pair. Each subprocess runs under an "
        "address-space cap (6 GB for the pair and batch rows, 16-20 GB for the 1M-class heads); 'fails' "
        "means the allocation was refused under it (PML asks for 12.8 GB at B = 1024).",
        "",
        HEADER,
        "|" + "---|" * (HEADER.count("|") - 1),
        *rows,
        "",
        *notes,
        "",
    ])
    from deepmetric.io import atomic_write_text

    atomic_write_text(output, text)


if __name__ == "__main__":
    main()
