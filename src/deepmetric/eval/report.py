"""One evaluation run written to a folder: ``metrics.json``, the PNG figures of the protocol and an
``index.html`` page that shows the numbers and links every figure."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np

from deepmetric.io import atomic_write_text, write_json


def write_report(out_dir, *, protocol: str, metrics: dict, evaluator, embeddings, labels, paths=None,
                 title: str = "deepmetric evaluation", embedding_map: bool = True) -> Path:
    """Write metrics.json, ``report/*.png`` and ``report/index.html`` under ``out_dir``; returns the page."""
    from deepmetric.eval import plots

    out_dir = Path(out_dir)
    report_dir = out_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", {k: (None if isinstance(v, float) and math.isnan(v) else v)
                                           for k, v in metrics.items()})
    figures: list[tuple[str, Path]] = []
    details = evaluator.details
    if protocol == "verification":
        scores, same = details["scores"], details["same"]
        figures.append(("ROC", plots.plot_roc(scores, same, report_dir / "roc.png")))
        figures.append(("DET", plots.plot_det(scores, same, report_dir / "det.png")))
        threshold = metrics.get("verification/threshold@far=1e-3", float("nan"))
        label = "threshold @ FAR 1e-3"
        if not np.isfinite(threshold):
            threshold, label = details["threshold"], "best-accuracy threshold"
        figures.append(("Genuine vs impostor scores", plots.plot_score_histogram(
            scores, same, report_dir / "score_histogram.png", threshold=threshold, threshold_label=label)))
    elif protocol == "identification":
        figures.append(("CMC", plots.plot_cmc(details["cmc"], report_dir / "cmc.png")))
        if len(details["non_mated"]) and len(details["mated"]):
            figures.append(("DIR vs FPIR", plots.plot_dir_fpir(details["mated"], details["non_mated"],
                                                              report_dir / "dir_fpir.png")))
        if details.get("distractors"):
            figures.append(("Rank-1 vs distractors", plots.plot_distractors(details["distractors"],
                                                                             report_dir / "distractors.png")))
    elif protocol == "retrieval":
        recalls = {k.split("/")[-1]: v for k, v in metrics.items() if k.startswith("retrieval/recall@")}
        figures.append(("Recall@K", plots.plot_recall_at_k(recalls, report_dir / "recall_at_k.png")))
        if paths is not None:
            grid_paths, grid_labels, ids = paths, labels, details["neighbours"].ids
            if details.get("query_rows") is not None:  # is_query/is_gallery rows: list queries then gallery
                query_rows, gallery_rows = details["query_rows"], details["gallery_rows"]
                grid_paths = [paths[i] for i in query_rows] + [paths[i] for i in gallery_rows]
                grid_labels = np.concatenate([np.asarray(labels)[query_rows], np.asarray(labels)[gallery_rows]])
                ids = np.where(ids >= 0, ids + len(query_rows), -1)
            figures.append(("Retrieval examples", plots.plot_retrieval_grid(
                grid_paths, grid_labels, ids, report_dir / "retrieval_grid.png")))
    if embedding_map and len(embeddings) >= 5:
        figures.append(("Embedding map (t-SNE)", plots.plot_embedding_map(embeddings, labels,
                                                                          report_dir / "embedding_map.png")))
    page = report_dir / "index.html"
    atomic_write_text(page, _html(title, protocol, metrics, evaluator.primary_metric, figures))
    return page


def _html(title: str, protocol: str, metrics: dict, primary: str, figures) -> str:
    rows = []
    for key, value in metrics.items():
        shown = "unavailable" if isinstance(value, float) and math.isnan(value) else f"{value:.6g}"
        style = ' style="font-weight:bold"' if key == primary else ""
        rows.append(f"<tr{style}><td>{html.escape(key)}</td><td>{shown}</td></tr>")
    images = "\n".join(f'<figure><a href="{p.name}"><img src="{p.name}" alt="{html.escape(name)}"></a>'
                       f"<figcaption>{html.escape(name)}</figcaption></figure>" for name, p in figures)
    links = " · ".join(f'<a href="{p.name}">{html.escape(name)}</a>' for name, p in figures)
    numbers = {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in metrics.items()}
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td{{border-bottom:1px solid #ddd;padding:2px 12px}}figure{{display:inline-block;margin:8px}}
img{{max-width:540px;border:1px solid #ccc}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>Protocol: <b>{html.escape(protocol)}</b>; primary metric <b>{html.escape(primary)}</b>.
Raw numbers: <a href="../metrics.json">metrics.json</a>. Figures: {links}</p>
<table>{''.join(rows)}</table>
{images}
<script type="application/json" id="metrics">{html.escape(json.dumps(numbers))}</script>
</body></html>
"""
