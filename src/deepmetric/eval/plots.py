"""Figures for evaluation reports (matplotlib, Agg backend, written as PNG files): ROC and DET curves, score
histograms with the threshold, CMC, DIR against FPIR, the distractor curve, a t-SNE map, retrieval grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepmetric.data.images import load_image


def _figure(width: float = 5.5, height: float = 4.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_roc(scores, same, path) -> Path:
    """ROC: true accept rate against false accept rate, FAR on a log axis."""
    from deepmetric.eval.verification import auc, roc

    far, tar, _ = roc(scores, same)
    fig, ax = _figure()
    keep = far > 0
    ax.plot(far[keep], tar[keep], lw=2, label=f"AUC = {auc(scores, same):.4f}")
    ax.set_xscale("log")
    ax.set_xlabel("false accept rate (FAR)")
    ax.set_ylabel("true accept rate (TAR)")
    ax.set_title("ROC")
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right")
    return _save(fig, Path(path))


def plot_det(scores, same, path) -> Path:
    """DET: false reject rate against false accept rate, both on log axes (Martin et al. 1997 use normal
    deviate axes; log axes read the same way for small rates)."""
    from deepmetric.eval.verification import eer, roc

    far, tar, _ = roc(scores, same)
    frr = 1 - tar
    keep = (far > 0) & (frr > 0)
    rate, _ = eer(scores, same)
    fig, ax = _figure()
    ax.plot(far[keep], frr[keep], lw=2)
    ax.plot([rate], [rate], "o", color="C3", label=f"EER = {rate:.4f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("false accept rate (FAR)")
    ax.set_ylabel("false reject rate (FRR)")
    ax.set_title("DET")
    ax.legend(loc="upper right")
    return _save(fig, Path(path))


def plot_score_histogram(scores, same, path, *, threshold: float | None = None, threshold_label: str = "") -> Path:
    """Genuine and impostor score distributions (densities) with the decision threshold marked."""
    scores, same = np.asarray(scores), np.asarray(same, bool)
    fig, ax = _figure()
    bins = np.linspace(scores.min(), scores.max(), 60)
    ax.hist(scores[~same], bins=bins, density=True, alpha=0.55, color="C3", label=f"impostor ({(~same).sum():,})")
    ax.hist(scores[same], bins=bins, density=True, alpha=0.55, color="C2", label=f"genuine ({same.sum():,})")
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="k", ls="--", label=f"{threshold_label or 'threshold'} = {threshold:.3f}")
    ax.set_xlabel("similarity score")
    ax.set_ylabel("density")
    ax.set_title("Genuine vs impostor scores")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, Path(path))


def plot_cmc(curve, path) -> Path:
    """Closed-set CMC: identification rate against rank."""
    curve = np.asarray(curve)
    fig, ax = _figure()
    ranks = np.arange(1, len(curve) + 1)
    ax.plot(ranks, curve, "o-", lw=2)
    ax.set_xlabel("rank")
    ax.set_ylabel("identification rate")
    ax.set_title(f"CMC (rank-1 = {curve[0]:.4f})")
    ax.set_xticks(ranks)
    ax.set_ylim(min(curve.min(), 0.9) - 0.02 if np.isfinite(curve).all() else 0, 1.01)
    return _save(fig, Path(path))


def plot_dir_fpir(mated, non_mated, path) -> Path:
    """Open-set DIR (rank 1) against FPIR."""
    from deepmetric.eval.identification import dir_curve

    fpir, dir_values = dir_curve(np.asarray(mated), np.asarray(non_mated))
    fig, ax = _figure()
    keep = fpir > 0
    ax.step(fpir[keep], dir_values[keep], where="post", lw=2)
    return _log_x_rate(fig, ax, path, "false positive identification rate (FPIR)",
                       "detection and identification rate (DIR)", "Open-set identification")


def _log_x_rate(fig, ax, path, xlabel: str, ylabel: str, title: str) -> Path:
    """Finish a figure whose x axis is logarithmic and whose y axis is a rate in [0, 1]."""
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(0, 1.01)
    return _save(fig, Path(path))


def plot_distractors(curve: dict, path) -> Path:
    """Rank-1 identification rate against the number of distractors (log axis)."""
    counts = np.array([c for c in curve if c > 0])
    values = np.array([curve[c] for c in counts])
    fig, ax = _figure()
    ax.plot(counts, values, "o-", lw=2)
    return _log_x_rate(fig, ax, path, "number of distractors", "rank-1 identification rate",
                       "Rank-1 vs distractors (MegaFace-style)")


def plot_recall_at_k(values: dict, path) -> Path:
    """Recall@K bars."""
    fig, ax = _figure()
    names = list(values)
    ax.bar(range(len(names)), [values[n] for n in names], color="C0")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1.01)
    ax.set_ylabel("recall")
    ax.set_title("Recall@K")
    return _save(fig, Path(path))


def plot_embedding_map(embeddings, labels, path, *, max_points: int = 3000, seed: int = 0) -> Path:
    """2-D t-SNE map (van der Maaten & Hinton 2008, scikit-learn) of up to ``max_points`` embeddings, coloured
    by label."""
    from sklearn.manifold import TSNE

    embeddings, labels = np.asarray(embeddings, np.float32), np.asarray(labels)
    rng = np.random.default_rng(seed)
    if len(embeddings) > max_points:
        pick = rng.choice(len(embeddings), max_points, replace=False)
        embeddings, labels = embeddings[pick], labels[pick]
    perplexity = float(min(30, max(2, (len(embeddings) - 1) // 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, max_iter=500)
    points = tsne.fit_transform(embeddings)
    _, codes = np.unique(labels, return_inverse=True)
    fig, ax = _figure(6, 5.5)
    ax.scatter(points[:, 0], points[:, 1], c=codes % 20, cmap="tab20", s=6, alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE of {len(points):,} embeddings ({len(np.unique(labels))} classes)")
    return _save(fig, Path(path))


def plot_retrieval_grid(paths, labels, neighbour_ids, path, *, num_queries: int = 6, top: int = 5,
                        seed: int = 0) -> Path:
    """Query images (left column) and their top-``top`` results; correct results framed green, wrong red."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(neighbour_ids), min(num_queries, len(neighbour_ids)), replace=False)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), top + 1, figsize=(1.6 * (top + 1), 1.7 * len(rows)), dpi=100, squeeze=False)
    for r, query in enumerate(rows):
        items = [int(query)] + [int(i) for i in neighbour_ids[query][:top]]
        for c, item in enumerate(items):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if item < 0:
                continue
            ax.imshow(load_image(paths[item]))  # upright, as the model saw it
            if c == 0:
                ax.set_title("query", fontsize=8)
                colour = "black"
            else:
                colour = "green" if labels[item] == labels[query] else "red"
                ax.set_title(f"#{c}", fontsize=8, color=colour)
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
    fig.suptitle("Retrieval: query and top results (green = same label)", fontsize=10)
    return _save(fig, Path(path))
