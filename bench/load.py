"""Load tests of ``deepmetric serve`` on loopback.

``--scenario attack`` (issue 12): the p50/p99 latency of cheap requests (health, list, identify by embedding)
while other clients post photos (decompression bombs: 4.9 kB 1-bit PNGs of 6300x6300 pixels, and ordinary
face photos), for two versions of the code side by side in one run (``--before`` another checkout's ``src``,
e.g. ``git worktree add /tmp/before <sha>``, against this one). Each version serves a copy of the same
gallery, idle first and then under the photo load.

``--scenario enrol`` (the default): concurrent identify + enrol against a large gallery.

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
    .venv/bin/python bench/load.py --scenario attack --before /tmp/before/src --identities 5000 \
        --output docs/benchmarks/load.md
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import re
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
    parser.add_argument("--scenario", choices=("enrol", "attack"), default="enrol")
    parser.add_argument("--before", type=Path, default=None,
                        help="attack: the src folder of the version to compare with (e.g. /tmp/before/src)")
    parser.add_argument("--after", type=Path, default=None,
                        help="attack: the src folder of the version measured as 'after' (default: this checkout's; "
                             "a clean worktree keeps others' uncommitted edits out of the measurement)")
    parser.add_argument("--before-note", default=None,
                        help="attack: one sentence on what the 'before' version does with photos, for the report")
    parser.add_argument("--duration", type=float, default=30.0, help="attack: seconds of photo load per version")
    parser.add_argument("--bomb-clients", type=int, default=2, help="attack: clients posting bombs")
    parser.add_argument("--bomb-interval", type=float, default=0.5,
                        help="attack: least seconds between two bombs of one attacker")
    parser.add_argument("--photo-clients", type=int, default=2, help="attack: clients posting face photos")
    args = parser.parse_args()
    if args.scenario == "attack":
        attack_main(args)
        return

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
    every = [value for values in latencies.values() for value in values]
    rows = []
    for kind, values in latencies.items():
        rows.append(f"| {kind} | {len(values)} | {len(values) / wall:.1f} | {percentile(values, 50):.1f} | "
                    f"{percentile(values, 99):.1f} |")
    genuine_done, impostor_done = len(latencies["identify_genuine"]), len(latencies["identify_impostor"])
    report = "\n".join([
        "## Concurrent identify + enrol",
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
        f"| **all** | {done} | {done / wall:.1f} | {percentile(every, 50):.1f} | "
        f"{percentile(every, 99):.1f} |",
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
        write_section(args.output, "## Concurrent identify + enrol", report)
    if args.keep:
        print(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if errors or lost or done < args.requests:
        sys.exit(1)


CHEAP = ("health", "list", "identify_embedding")
ATTACK_TITLE = "## Cheap requests while photos are posted"
FILE_TITLE = "# Load tests: `deepmetric serve`"


def write_section(path: Path, title: str, section: str) -> None:
    """Replace the section starting with ``title`` in the report at ``path`` (each scenario keeps the other's)."""
    text = path.read_text() if path.exists() else FILE_TITLE + "\n"
    sections = {}
    for part in text.split("\n## ")[1:]:
        sections["## " + part.split(":", 1)[0].split("(", 1)[0].strip()] = "## " + part.rstrip()
    key = next((name for name in sections if name.startswith(title) or title.startswith(name)), title)
    sections[key] = section.rstrip()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FILE_TITLE + "\n\n" + "\n\n".join(sections.values()) + "\n")


def bomb_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (6300, 6300)).save(buffer, format="PNG")
    return buffer.getvalue()


def server_usage(pid: int) -> dict[str, float]:
    """CPU seconds used so far and peak resident memory (MB) of the server process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    peak_kb = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmHWM:"))
    return {"cpu": (int(fields[11]) + int(fields[12])) / ticks, "peak_mb": peak_kb / 1024}


def run_attack(url: str, args: argparse.Namespace, probes: np.ndarray, *, loaded: bool, pid: int) -> dict:
    """Cheap clients for ``args.duration`` seconds (a third of it when idle), with bomb clients (one bomb each
    per ``args.bomb_interval`` seconds at most) and photo clients (one after the other) posting to
    /api/identify meanwhile when ``loaded``; latencies of cheap requests and photos, the server's CPU."""
    import httpx

    from deepmetric.faces.samples import astronaut, encode

    bomb, photo = bomb_png(), encode(astronaut(), "JPEG")
    usage_at_start = server_usage(pid)
    started_at = time.monotonic()
    stop_at = started_at + (args.duration if loaded else args.duration / 3)
    lock = threading.Lock()
    latencies: dict[str, list[float]] = {kind: [] for kind in (*CHEAP, "photo", "bomb")}
    photo_answers: dict[str, dict[str, int]] = {"bomb": {}, "photo": {}}
    errors: list[str] = []

    def cheap_client(seed: int) -> None:
        with httpx.Client(base_url=url, timeout=120, headers={"X-API-Key": API_KEY}) as client:
            turn = seed
            while time.monotonic() < stop_at:
                kind = CHEAP[turn % len(CHEAP)]
                started = time.perf_counter()
                try:
                    if kind == "health":
                        response = client.get("/api/health")
                    elif kind == "list":
                        response = client.get("/api/identities", params={"limit": 20, "offset": turn % 1000})
                    else:
                        response = client.post("/api/identify/embedding",
                                               json={"embedding": probes[turn % len(probes)].tolist(), "k": 5})
                    status = response.status_code
                except httpx.HTTPError as error:
                    status = type(error).__name__
                elapsed = time.perf_counter() - started
                with lock:
                    if status == 200:
                        latencies[kind].append(elapsed)
                    else:
                        errors.append(f"{kind}: {status}")
                turn += 1

    def photo_client(kind: str, data: bytes, interval: float) -> None:
        with httpx.Client(base_url=url, timeout=120, headers={"X-API-Key": API_KEY}) as client:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                try:
                    status = str(client.post("/api/identify", files={"image": ("p", data)},
                                             data={"threshold": "0.6"}).status_code)
                except httpx.HTTPError as error:
                    status = type(error).__name__
                elapsed = time.perf_counter() - started
                with lock:
                    photo_answers[kind][status] = photo_answers[kind].get(status, 0) + 1
                    latencies[kind].append(elapsed)
                time.sleep(max(0.0, interval - elapsed))

    threads = [threading.Thread(target=cheap_client, args=(i,)) for i in range(args.clients)]
    if loaded:
        threads += [threading.Thread(target=photo_client, args=("bomb", bomb, args.bomb_interval))
                    for _ in range(args.bomb_clients)]
        threads += [threading.Thread(target=photo_client, args=("photo", photo, 0.0))
                    for _ in range(args.photo_clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started_at
    usage = server_usage(pid)
    return {"latencies": latencies, "photos": photo_answers, "errors": errors, "wall": wall,
            "server_cpu": usage["cpu"] - usage_at_start["cpu"], "peak_mb": usage["peak_mb"]}


def warm_up(url: str, probe: np.ndarray) -> None:
    """One untimed request of each kind: the first identify loads the index, the first photo the face model."""
    import httpx

    from deepmetric.faces.samples import astronaut, encode

    with httpx.Client(base_url=url, timeout=600, headers={"X-API-Key": API_KEY}) as client:
        client.get("/api/identities", params={"limit": 20})
        client.post("/api/identify/embedding", json={"embedding": probe.tolist(), "k": 5})
        client.post("/api/identify", files={"image": ("p", encode(astronaut(), "JPEG"))}, data={"threshold": "0.6"})


def server_pid(log_path: Path) -> int:
    """The pid ``deepmetric serve`` prints when it starts (both versions print it)."""
    found = re.search(r"\(pid (\d+)", log_path.read_text())
    if found is None:
        sys.exit(f"no pid in the server log {log_path}:\n{log_path.read_text()}")
    return int(found.group(1))


def attack_main(args: argparse.Namespace) -> None:
    if args.before is None or not (args.before / "deepmetric").is_dir():
        sys.exit(f"--before must be the src folder of another checkout (holding deepmetric/), got {args.before}")
    from deepmetric.service.process import serve_in_subprocess

    population = Population(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="deepmetric-attack-"))
    centres = seed_gallery(workdir / "seeded", population, args.identities)
    probes = population.samples(centres[: min(len(centres), 500)])
    versions = {"before": args.before.resolve(),
                "after": (args.after or Path(__file__).resolve().parent.parent / "src").resolve()}
    results: dict[str, dict[str, dict]] = {}
    for label, source in versions.items():
        shutil.copytree(workdir / "seeded", workdir / label)
        log_path = workdir / f"{label}.log"
        with serve_in_subprocess(workdir / label, api_key=API_KEY, log_path=log_path, source=source) as url:
            pid = server_pid(log_path)
            warm_up(url, probes[0])
            results[label] = {"idle": run_attack(url, args, probes, loaded=False, pid=pid),
                              "loaded": run_attack(url, args, probes, loaded=True, pid=pid)}
        print(f"{label}: done", flush=True)
    report_attack(results, args, versions)
    if args.keep:
        print(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _commit(source: Path) -> str:
    """The short commit of the checkout holding ``source`` (a src folder), or "uncommitted" when it has edits."""
    import subprocess

    def git(*command: str) -> str:
        done = subprocess.run(["git", "-C", str(source), *command], check=False, capture_output=True, text=True)
        return done.stdout.strip()

    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    return f"{sha} + uncommitted edits" if git("status", "--porcelain", "--", ".") else sha


def _cell(values: list[float]) -> str:
    return f"{percentile(values, 50):.0f} / {percentile(values, 99):.0f} ({len(values)})" if values else "-"


def report_attack(results: dict, args: argparse.Namespace, versions: dict[str, Path]) -> None:
    phases = [(label, phase) for label in versions for phase in ("idle", "loaded")]
    rows = [f"| {kind} | " + " | ".join(_cell(results[label][phase]["latencies"][kind]) for label, phase in phases)
            + " |" for kind in (*CHEAP, "photo", "bomb")]
    rows.append("| server CPU (s) / wall (s) | " + " | ".join(
        f"{results[label][phase]['server_cpu']:.1f} / {results[label][phase]['wall']:.1f}" for label, phase in phases)
        + " |")
    rows.append("| server peak memory (MB) | " + " | ".join(
        f"{results[label][phase]['peak_mb']:.0f}" for label, phase in phases) + " |")
    answers = []
    for label in versions:
        loaded = results[label]["loaded"]
        by_kind = "; ".join(f"{kind}: " + ", ".join(f"{count} x {status}" for status, count in sorted(by.items()))
                            for kind, by in loaded["photos"].items())
        errors = results[label]["idle"]["errors"] + loaded["errors"]
        answers.append(f"- **{label}**: answers under load {by_kind}; cheap requests failed: {len(errors)}"
                       + (f" (first: {errors[0]})" if errors else ""))
    report = "\n".join([
        ATTACK_TITLE + ": before and after issue 12",
        "",
        f"Command: `flock /tmp/bench.lock .venv/bin/python bench/load.py --scenario attack --before "
        f"{versions['before']} --after {versions['after']} --identities {args.identities} --clients "
        f"{args.clients} --bomb-clients "
        f"{args.bomb_clients} --bomb-interval {args.bomb_interval:g} --photo-clients {args.photo_clients} "
        f"--duration {args.duration:g}`; {os.cpu_count()} cores ({_cpu_model()}), load average at the end "
        f"{os.getloadavg()[0]:.1f}, clients and server on the same machine. Before: commit "
        f"{_commit(versions['before'])}; after: commit {_commit(versions['after'])}.",
        "",
        f"Each version serves a copy of one gallery ({args.identities:,} synthetic identities, dlib's face model "
        f"loaded) on loopback. {args.clients} clients send cheap requests in turn (health, a page of 20 "
        f"identities, identify by a 128-d embedding), idle for {args.duration / 3:g} s, then for "
        f"{args.duration:g} s while {args.bomb_clients} attackers each post a 4.9 kB 6300x6300 1-bit PNG to "
        f"`/api/identify` (one every {args.bomb_interval:g} s at most, the next once answered) and "
        f"{args.photo_clients} users each post a 512x512 face photo, the next as soon as answered.",
        "",
        "Latency in ms, p50 / p99 (count of answers); photo and bomb rows count every answer (413 and 503 too):",
        "",
        "| request | before, idle | before, under photo load | after, idle | after, under photo load |",
        "|---|---|---|---|---|",
        *rows,
        "",
        *answers,
        "",
        (f"Before: {args.before_note} " if args.before_note else "") +
        "After: a bomb is refused from its header (413) before decoding, photos run in a pool of one worker "
        "less than the cores (at least one) with as many queue places, and a full pool answers 503 with "
        "Retry-After at once.",
        "",
    ])
    print(report)
    if args.output:
        write_section(args.output, ATTACK_TITLE, report)


if __name__ == "__main__":
    main()
