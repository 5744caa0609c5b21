"""The Ray-sharded index on a real local cluster (a head and a second node, both on loopback, stopped by
the fixture): exact shards answer exactly as one exact index (ties included), ANN shards' recall, add
routing and refusals, remove, range search, len, save/load with checksums, and a dead shard is named
(or, when asked, its absence flagged)."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deepmetric.index import build_index
from deepmetric.index.base import IndexFormatError
from deepmetric.index.factory import load_index
from deepmetric.index.ray_backend import RayShardedIndex

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))
# Loopback only, so no token: with a token the nodes and the driver would depend on ~/.ray/auth_token,
# which any other local Ray session may create or replace.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_node(arguments, log):
    """``ray start --block`` in its own process group: stopping it (by its id) stops that node's processes."""
    return subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", "--num-cpus", "1",
                             "--object-store-memory", str(80 * 1024 * 1024), *arguments],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **RAY_ENV})


def stop_node(process):
    """SIGTERM (Ray drains the node), then SIGKILL for whatever of that process group is left after 5 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    saved = {name: os.environ.get(name) for name in RAY_ENV}
    os.environ.update(RAY_ENV)  # the driver's ray.init reads them
    port = free_port()
    address = f"127.0.0.1:{port}"
    logs = tmp_path_factory.mktemp("ray_logs")
    temp_dir = Path("/tmp") / f"dm_ray_{port}"  # short: Ray's socket paths must fit 107 bytes
    head_log, worker_log = open(logs / "head.log", "w"), open(logs / "worker.log", "w")  # noqa: SIM115
    nodes = [start_node(["--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                         "--include-dashboard", "false", "--temp-dir", str(temp_dir)], head_log)]
    try:
        deadline = time.time() + 180  # generous: a loaded 2-core machine starts Ray slowly
        while True:  # the second node joins once the head's GCS listens
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.time() > deadline or nodes[0].poll() is not None:
                raise RuntimeError(f"the Ray head did not start: {(logs / 'head.log').read_text()[-2000:]}")
            time.sleep(1)
        nodes.append(start_node(["--address", address, "--node-ip-address", "127.0.0.1"], worker_log))
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        while len([node for node in ray.nodes() if node["Alive"]]) < 2:
            if time.time() > deadline:
                raise RuntimeError(f"the second node did not join: {(logs / 'worker.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield address
    finally:
        ray.shutdown()
        for node in reversed(nodes):
            stop_node(node)
        head_log.close()
        worker_log.close()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(temp_dir, ignore_errors=True)


def data(count=600, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(count, dim)).astype(np.float32)
    vectors[count // 2:count // 2 + 40] = vectors[:40]  # duplicates: tied scores
    return vectors, rng.normal(size=(25, dim)).astype(np.float32)


def test_exact_shards_equal_one_exact_index_and_a_dead_shard_is_named(cluster):
    vectors, queries = data()
    single = build_index("Flat", 16)
    single.add(vectors)
    sharded = build_index("Flat", 16, backend="ray", shards=3, address=cluster)
    sharded.add(vectors[:350])
    sharded.add(vectors[350:])
    assert len(sharded) == len(single) == 600 and np.array_equal(sharded.ids, single.ids)
    expected, got = single.search(queries, 30), sharded.search(queries, 30)
    np.testing.assert_array_equal(got.ids, expected.ids)
    np.testing.assert_array_equal(got.scores, expected.scores)
    assert not got.partial
    subset = np.arange(0, 600, 7)
    np.testing.assert_array_equal(sharded.search(queries, 5, subset=subset).ids,
                                  single.search(queries, 5, subset=subset).ids)
    ranged, reference = sharded.range_search(queries, 0.3), single.range_search(queries, 0.3)
    np.testing.assert_array_equal(ranged.lims, reference.lims)
    np.testing.assert_array_equal(ranged.ids, reference.ids)
    assert sharded.remove([1, 2, 3, 10_000]) == single.remove([1, 2, 3, 10_000]) == 3
    assert len(sharded) == 597 and 1 not in sharded and 4 in sharded
    np.testing.assert_array_equal(sharded.search(queries, 10).ids, single.search(queries, 10).ids)
    with pytest.raises(ValueError, match="already in the index"):
        sharded.add(vectors[:2], ids=[5, 700])
    assert 700 not in sharded and len(sharded) == 597  # a refused add adds nothing on any shard
    with pytest.raises(ValueError, match="all-zero row"):
        sharded.add(np.zeros((1, 16), np.float32))
    # a dead shard is named, unless partial answers are asked for: then its absence is flagged
    ray.kill(sharded._actors[1])
    for _ in range(100):  # the kill is asynchronous
        try:
            ray.get(sharded._actors[1].state.remote(), timeout=5)
            time.sleep(0.1)
        except ray.exceptions.RayActorError:
            break
    with pytest.raises(RuntimeError, match="shard 1 of 3"):
        sharded.search(queries, 5)
    partial = sharded.search(queries, 5, allow_partial=True)
    assert partial.partial and partial.missing_shards == (1,)
    assert (partial.ids % 3 != 1).all() and (partial.ids >= 0).all()


def test_hnsw_shards_recall_against_exact_search(cluster):
    vectors, queries = data(2000, 16, seed=1)
    exact = build_index("Flat", 16)
    exact.add(vectors)
    sharded = build_index("HNSW16", 16, backend="ray", shards=2, address=cluster)
    sharded.add(vectors)
    sharded.set_params("efSearch=64")
    truth, found = exact.search(queries, 10).ids, sharded.search(queries, 10).ids
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found)])
    assert recall >= 0.95, recall


def test_save_load_and_checksums(cluster, tmp_path):
    vectors, queries = data()
    sharded = build_index("Flat", 16, metric="euclidean", backend="ray", shards=2, address=cluster)
    sharded.add(vectors, ids=np.arange(600) * 3 + 11)
    sharded.save(tmp_path / "index")
    loaded = load_index(tmp_path / "index", address=cluster)
    assert loaded.backend == "ray" and loaded.num_shards == 2 and len(loaded) == 600
    np.testing.assert_array_equal(loaded.search(queries, 8).ids, sharded.search(queries, 8).ids)
    loaded.add(vectors[:1])  # default ids continue after the largest
    assert int(loaded.ids[-1]) == 599 * 3 + 12
    shard_file = next((tmp_path / "index" / "shard-0001").glob("*.bin"))
    shard_file.write_bytes(shard_file.read_bytes()[:-4] + b"\0\0\0\1")
    with pytest.raises(IndexFormatError, match="SHA-256"):
        load_index(tmp_path / "index", address=cluster)


def wait_until_answering(actor, timeout=60):
    deadline = time.time() + timeout
    while True:
        try:
            return ray.get(actor.state.remote(), timeout=5)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def test_a_killed_durable_shard_restarts_without_losing_an_acknowledged_change(cluster, tmp_path):
    vectors, queries = data()
    single = build_index("Flat", 16)
    sharded = RayShardedIndex(spec="Flat", dim=16, shards=2, address=cluster, durable_dir=tmp_path / "log")
    for part in (vectors[:200], vectors[200:400]):
        single.add(part)
        sharded.add(part)
    sharded.checkpoint()  # a snapshot, then more changes only in the log
    single.add(vectors[400:])
    sharded.add(vectors[400:])
    assert sharded.remove([0, 1, 2, 3]) == single.remove([0, 1, 2, 3]) == 4
    before = wait_until_answering(sharded._actors[0])["size"]
    ray.kill(sharded._actors[0], no_restart=False)
    time.sleep(1)
    assert wait_until_answering(sharded._actors[0])["size"] == before
    assert len(sharded) == len(single) == 596
    np.testing.assert_array_equal(sharded.search(queries, 20).ids, single.search(queries, 20).ids)
