"""``deepmetric index build | search | tune | bench``: vector indexes from .npy embeddings. Heavy imports
happen inside the commands."""

from __future__ import annotations

from pathlib import Path

import typer

index_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Build, search, tune and benchmark vector indexes (exact, faiss, hnswlib, annoy).")


def _load_matrix(path: Path, argument: str, *, mmap: bool = False):
    from deepmetric.io import load_array

    try:  # a missing file, another format or pickled objects: one line that says which
        return load_array(path, what=argument.lower(), mmap=mmap)
    except (OSError, ValueError) as error:
        raise typer.BadParameter(str(error), param_hint=argument) from error


@index_app.command("build")
def build_command(
    embeddings: Path = typer.Argument(..., help="(N, D) float .npy of vectors to index"),
    output: Path = typer.Option(..., "-o", "--output", help="folder to write the index to"),
    spec: str = typer.Option("auto", help="faiss factory string, 'HNSW32', 'Annoy50', 'Flat' or 'auto'"),
    backend: str | None = typer.Option(None, help="exact | faiss | hnswlib | annoy (default: from spec)"),
    metric: str = typer.Option("cosine", help="cosine | dot | euclidean (aliases: ip = dot, l2 = euclidean)"),
    ids: Path | None = typer.Option(None, help="(N,) int64 .npy of ids (default 0..N-1)"),
    knobs: str | None = typer.Option(None, help="query-time knobs stored with the index, e.g. nprobe=32"),
    memory_budget_gb: float | None = typer.Option(None, help="memory budget for spec=auto"),
) -> None:
    """Build an index over EMBEDDINGS and save it to OUTPUT."""
    import time

    from deepmetric.index import build_index

    vectors = _load_matrix(embeddings, "EMBEDDINGS")
    if vectors.ndim != 2:
        raise typer.BadParameter(f"expected an (N, D) matrix, got shape {vectors.shape}", param_hint="EMBEDDINGS")
    budget = int(memory_budget_gb * 2**30) if memory_budget_gb else None
    index = build_index(spec, vectors.shape[1], metric=metric, backend=backend, num_vectors=vectors.shape[0],
                        memory_budget=budget)
    start = time.perf_counter()
    index.train(vectors)
    index.add(vectors, _load_matrix(ids, "--ids") if ids else None)
    if knobs:
        index.set_params(knobs)
    index.save(output)
    typer.echo(f"{index.backend} index {index.spec!r}: {len(index)} vectors, built in "
               f"{time.perf_counter() - start:.1f} s, saved to {output}")


@index_app.command("search")
def search_command(
    index_path: Path = typer.Argument(..., help="index folder written by 'deepmetric index build'"),
    queries: Path = typer.Argument(..., help="(Q, D) float .npy of queries"),
    k: int = typer.Option(10, "-k", help="neighbours per query"),
    knobs: str | None = typer.Option(None, help="query-time knobs, e.g. efSearch=128"),
    output: Path | None = typer.Option(None, "-o", "--output", help=".npz with ids and scores"),
    mmap: bool = typer.Option(False, help="memory-map flat / IVF data instead of reading it"),
) -> None:
    """Search QUERIES in the index; print the top results or write them to an .npz (ids, scores)."""
    import numpy as np

    from deepmetric.index import load_index

    index = load_index(index_path, mmap=mmap)
    if knobs:
        index.set_params(knobs)
    result = index.search(_load_matrix(queries, "QUERIES"), k)
    if output:
        np.savez(output, ids=result.ids, scores=result.scores)
        typer.echo(f"wrote {output}")
    else:
        for row, (ids, scores) in enumerate(zip(result.ids, result.scores)):
            pairs = ", ".join(f"{i}:{s:.4f}" for i, s in zip(ids, scores) if i >= 0)
            typer.echo(f"{row}\t{pairs}")


@index_app.command("tune")
def tune_command(
    index_path: Path = typer.Argument(..., help="index folder"),
    queries: Path = typer.Argument(..., help="(Q, D) .npy sample queries"),
    target_recall: float = typer.Option(0.95, help="1-Recall@k to reach against exact search"),
    database: Path | None = typer.Option(None, help=".npy of the indexed vectors (needed for exact "
                                                      "ground truth with PQ codes)"),
    k: int = typer.Option(1, "-k"),
    save: bool = typer.Option(True, help="store the chosen knobs in the index folder"),
) -> None:
    """Find the cheapest query-time knobs reaching TARGET_RECALL and store them with the index."""
    from deepmetric.index import load_index
    from deepmetric.index.tuning import tune

    index = load_index(index_path)
    result = tune(index, _load_matrix(queries, "QUERIES"), target_recall=target_recall, k=k,
                  database=_load_matrix(database, "--database") if database else None)
    for point in result.tried:
        typer.echo(f"{point.knobs:>28}  recall {point.recall:.4f}  {point.qps:10.0f} QPS")
    if result.knobs is None:
        typer.echo(f"no setting reached {target_recall}; best recall {result.recall:.4f}")
        raise typer.Exit(1)
    typer.echo(f"chosen: {result.knobs} (recall {result.recall:.4f}, {result.qps:.0f} QPS)")
    if save:
        index.save(index_path)


@index_app.command("bench")
def bench_command(
    n: int = typer.Option(1_000_000, "--n", help="database vectors"),
    dim: int = typer.Option(128, help="dimension of the synthetic vectors"),
    queries: int = typer.Option(10_000, help="number of queries"),
    data: Path | None = typer.Option(None, help="use this (N, D) .npy instead of synthetic vectors"),
    metric: str = typer.Option("cosine"),
    methods: str | None = typer.Option(None, help="comma-separated families, e.g. 'IVF,HNSW hnswlib'"),
    report: Path | None = typer.Option(None, help="markdown report (e.g. docs/benchmarks/ann.md)"),
    plot: Path | None = typer.Option(None, help="recall-vs-QPS PNG"),
    seed: int = typer.Option(0),
    flat_only: bool = typer.Option(False, "--flat-only", help="only time exact Flat search against faiss "
                                   "IndexFlatIP side by side (top-k, k from --k) and print the ratio"),
    k: int = typer.Option(10, "--k", help="neighbours per query for --flat-only"),
) -> None:
    """Reproduce the seeds' ANN table: exact vs IVF, IVF-PQ, HNSW (faiss, hnswlib) and Annoy."""
    from deepmetric.distances import canonical_metric
    from deepmetric.index.bench import compare_flat, default_methods, make_embeddings, run_benchmark
    from deepmetric.validation import check_choice, check_non_negative_int, check_positive_int

    # Every option is checked before a vector is made: a bad one must not cost a 1M-vector benchmark first.
    for option, value in (("--n", n), ("--dim", dim), ("--queries", queries), ("--k", k)):
        check_positive_int(option, value)
    check_non_negative_int("--seed", seed)
    metric = canonical_metric(metric, "--metric")
    chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods is not None else None
    if chosen is not None:
        # Family names, and method names that --methods can spell (a comma splits the list).
        known = sorted({name for method in default_methods(n) for name in method[:2] if "," not in name})
        if not chosen:
            raise ValueError(f"--methods names no method; choose among {', '.join(known)}")
        for method in chosen:
            check_choice("--methods", method, known)
    if data is not None and not flat_only:
        rows = _load_matrix(data, "--data", mmap=True)  # memory-mapped: only the header is read
        if rows.ndim != 2 or rows.shape[0] <= queries:
            raise typer.BadParameter(f"expected an (N, D) matrix with more than --queries={queries} rows, got "
                                     f"shape {rows.shape}", param_hint="--data")
    if flat_only:
        database, query_vectors = make_embeddings(n, dim, num_queries=queries, seed=seed)
        compare_flat(database, query_vectors, k=k, metric=metric, log=typer.echo)
        return
    run_benchmark(n=n, dim=dim, num_queries=queries, data=str(data) if data else None, metric=metric,
                  methods=chosen, seed=seed, report=str(report) if report else None,
                  plot=str(plot) if plot else None, log=typer.echo)


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")
