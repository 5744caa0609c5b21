"""Load test of ``deepmetric serve`` on loopback: concurrent identify + enrol against a large gallery.

Bounded: a fixed number of requests, stopped early at a time limit. Seeds a gallery of ``--identities``
synthetic identities (embeddings enrolled directly, stamped with dlib's face model so the real service
starts on it), runs the service in a subprocess, fires identify-by-embedding and enrol-by-embedding requests
from ``--clients`` threads, then checks: zero errors, every acknowledged enrolment present after the server
stops (read from the SQLite truth), genuine probes identified, impostors rejected.

Embeddings mimic a face model: identity centres share a common direction (different people still score
about 0.5 cosine, as real face embeddings do), templates and probes scatter around their centre (same
person about 0.96), so the 0.91 operating point separates them.

    .venv/bin/python bench/load.py                      # 100,000 identities, 3,000 requests
    .venv/bin/python bench/load.py --identities 5000 --requests 300   # quick check
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

API_KEY = "load-test-key"
NOTES = ("What a request does: identify = JSON decode of 128 floats, HNSW search (efSearch=256) for 32 "
         "candidate identities, exact re-scoring of them from a SQLite snapshot; enrol = one SQLite transaction "
         "committed with fsync (synchronous=FULL) + an index add. Client threads and server share the 2 cores, "
         "and other jobs were running, so absolute numbers are pessimistic; the check that matters is zero errors "
         "and zero lost enrolments under concurrency.\n")
DIM = 128


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class Population:
    """Synthetic identities: centre_i = unit(mu + z_i), sample = unit(centre + 0.2 * unit(noise))."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.mu = unit(self.rng.normal(size=DIM))

    def centres(self, count: int) -> np.ndarray:
        return unit(self.mu + unit(self.rng.normal(size=(count, DIM))))

    def samples(self, centres: np.ndarray) -> np.ndarray:
        return unit(centres + 0.2 * unit(self.rng.normal(size=centres.shape)))


def seed_gallery(folder: Path, population: Population, count: int) -> np.ndarray:
    from deepmetric.faces import DlibFaceEmbedder
    from deepmetric.gallery import Gallery, TemplateInput

    model = DlibFaceEmbedder()
    gallery = Gallery.create(folder, embedding_dim=DIM, model_stamp=model.fingerprint(),
                             model_config={**model.config, "loaded_from": {"model": "dlib-face", "faces": False,
                                                                            "detector": "hog"}})
    centres = population.centres(count)
    started = time.perf_counter()
    for start in range(0, count, 10_000):
        batch = centres[start:start + 10_000]
        templates = population.samples(batch)
        gallery.store.add_identities([(f"person{start + i:06d}", None, None, [TemplateInput(vector=t)])
                                      for i, t in enumerate(templates)])
    inserted = time.perf_counter() - started
    started = time.perf_counter()
    gallery.index.sync()  # builds and persists the index cache the server will load
    built = time.perf_counter() - started
    info = gallery.index.info()
    gallery.close()
    print(f"seeded {count} identities in {inserted:.1f} s; index {info['spec']} built in {built:.1f} s", flush=True)
    return centres


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) * 1000 if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=3000, help="total requests (identify + enrol)")
    parser.add_argument("--enrol-fraction", type=float, default=0.2)
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--time-limit", type=float, default=300.0, help="stop sending after this many seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="markdown report (docs/benchmarks/load.md)")
    parser.add_argument("--keep", action="store_true", help="keep the seeded gallery and server log")
    args = parser.parse_args()

    population = Population(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="deepmetric-load-"))
    centres = seed_gallery(workdir / "gallery", population, args.identities)

    from deepmetric.service.process import serve_in_subprocess

    with serve_in_subprocess(workdir / "gallery", api_key=API_KEY, log_path=workdir / "server.log") as url:
        run = run_load(url, args, population, centres)
    report_and_check(run, args, workdir)


def run_load(url: str, args: argparse.Namespace, population: Population, centres: np.ndarray) -> dict:
    """Fire the fixed task list from ``args.clients`` threads; latencies, errors, acknowledged enrolments."""
    import httpx

    # The task list is fixed up front: bounded work, reproducible mix.
    rng = random.Random(args.seed)
    num_enrol = int(args.requests * args.enrol_fraction)
    new_centres = population.centres(num_enrol)
    tasks: list[tuple[str, int]] = [("enrol", i) for i in range(num_enrol)]
    num_identify = args.requests - num_enrol
    tasks += [("identify_genuine" if i % 2 == 0 else "identify_impostor", i) for i in range(num_identify)]
    rng.shuffle(tasks)
    genuine_targets = np.random.default_rng(args.seed + 1).integers(0, args.identities, size=num_identify)
    genuine_probes = population.samples(centres[genuine_targets])
    impostor_probes = population.samples(population.centres(num_identify))

    lock = threading.Lock()
    cursor = iter(tasks)
    latencies: dict[str, list[float]] = {"enrol": [], "identify_genuine": [], "identify_impostor": []}
    errors: list[str] = []
    acknowledged: list[str] = []
    correct = {"identify_genuine": 0, "identify_impostor": 0}
    stop_at = time.monotonic() + args.time_limit

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=60, headers={"X-API-Key": API_KEY}) as client:
            while time.monotonic() < stop_at:
                with lock:
                    task = next(cursor, None)
                if task is None:
                    return
                kind, i = task
                started = time.perf_counter()
                try:
                    if kind == "enrol":
                        identity_id = f"new{i:05d}"
                        response = client.post("/api/identities/embeddings", json={
                            "identity_id": identity_id,
                            "embeddings": population.samples(np.repeat(new_centres[i:i + 1], 2, axis=0)).tolist()})
                        ok = response.status_code == 201
                    else:
                        probe = genuine_probes[i] if kind == "identify_genuine" else impostor_probes[i]
                        response = client.post("/api/identify/embedding", json={"embedding": probe.tolist(), "k": 5})
                        ok = response.status_code == 200
                except httpx.HTTPError as error:
                    with lock:
                        errors.append(f"{kind}: {type(error).__name__}: {error}")
                    continue
                elapsed = time.perf_counter() - started
                with lock:
                    if not ok:
                        errors.append(f"{kind}: {response.status_code} {response.text[:200]}")
                        continue
                    latencies[kind].append(elapsed)
                    if kind == "enrol":
                        acknowledged.append(identity_id)
                    elif kind == "identify_genuine":
                        correct[kind] += response.json()["identity_id"] == f"person{genuine_targets[i]:06d}"
                    else:
                        correct[kind] += response.json()["identity_id"] is None

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    # A just-enrolled identity is searchable at once.
    probe_new = population.samples(new_centres[:1])[0] if num_enrol else None
    fresh = (httpx.post(f"{url}/api/identify/embedding", json={"embedding": probe_new.tolist()}).json()["identity_id"]
             if probe_new is not None else None)
    health = httpx.get(f"{url}/api/health").json()
    return {"wall": wall, "latencies": latencies, "errors": errors, "acknowledged": acknowledged,
            "correct": correct, "fresh": fresh, "health": health}


def report_and_check(run: dict, args: argparse.Namespace, workdir: Path) -> None:
    """Check the SQLite truth after the server stopped, print and write the report, exit 1 on failure."""
    from deepmetric.gallery import GalleryStore

    wall, latencies, errors, acknowledged = run["wall"], run["latencies"], run["errors"], run["acknowledged"]
    correct, fresh, health = run["correct"], run["fresh"], run["health"]
    store = GalleryStore(workdir / "gallery" / "gallery.sqlite3")
    lost = [identity_id for identity_id in acknowledged if not store.contains(identity_id)]
    total_identities = len(store)
    store.close()

    done = sum(len(v) for v in latencies.values())
    rows = []
    for kind, values in latencies.items():
        rows.append(f"| {kind} | {len(values)} | {len(values) / wall:.1f} | {percentile(values, 50):.1f} | "
                    f"{percentile(values, 99):.1f} |")
    genuine_done, impostor_done = len(latencies["identify_genuine"]), len(latencies["identify_impostor"])
    report = "\n".join([
        "# Load test: `deepmetric serve`, concurrent identify + enrol",
        "",
        f"Command: `.venv/bin/python bench/load.py --identities {args.identities} --requests {args.requests} "
        f"--clients {args.clients}` (loopback, one uvicorn process, {args.clients} client threads in the same "
        f"machine; {os.cpu_count()} cores, {platform.processor() or platform.machine()}, load average at start "
        f"{os.getloadavg()[0]:.1f} on a machine shared with other jobs).",
        "",
        f"Gallery: {args.identities:,} synthetic identities (embeddings enrolled directly, 128-d, stamped with "
        f"dlib's face model), index `{health['index']['spec']}`, threshold {health['threshold']}.",
        "",
        "| request | count | throughput (req/s) | p50 (ms) | p99 (ms) |",
        "|---|---|---|---|---|",
        *rows,
        f"| **all** | {done} | {done / wall:.1f} | {percentile(sum(latencies.values(), []), 50):.1f} | "
        f"{percentile(sum(latencies.values(), []), 99):.1f} |",
        "",
        f"- wall time {wall:.1f} s for {done} of {args.requests} planned requests (time limit {args.time_limit:.0f} s)",
        f"- errors: **{len(errors)}**" + (f" (first: {errors[0]})" if errors else ""),
        f"- acknowledged enrolments: {len(acknowledged)}; lost after the server stopped: **{len(lost)}** "
        f"(gallery holds {total_identities:,} identities = {args.identities:,} + {len(acknowledged)})",
        f"- genuine probes identified correctly: {correct['identify_genuine']}/{genuine_done}; impostor probes "
        f"rejected as unknown: {correct['identify_impostor']}/{impostor_done}",
        f"- a probe of the first enrolled identity right after the run is identified as `{fresh}`",
        "",
        NOTES,
    ])
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)
    if args.keep:
        print(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if errors or lost or done < args.requests:
        sys.exit(1)


if __name__ == "__main__":
    main()
