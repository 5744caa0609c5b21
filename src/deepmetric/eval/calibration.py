"""The decision threshold for a target false accept rate, with a bootstrap confidence interval, stored in a
model folder's config.json under "calibration" and read back by everything that decides same/different.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from deepmetric.distances import canonical_metric
from deepmetric.eval.verification import as_pairs, bootstrap_ci, check_rate, far_supported, threshold_at_far


def calibrate_threshold(scores, same, *, target_far: float = 1e-3, metric: str = "cosine",
                        num_bootstrap: int = 200, seed: int = 0) -> dict:
    r"""The lowest threshold t with FAR(t) <= ``target_far`` on the given pairs (see
    ``verification.threshold_at_far``), and its 95% percentile-bootstrap interval.

    Args:
        scores: (P,) similarity of each pair (higher = more alike). same: (P,) genuine flags.
        target_far: wanted false accept rate; needs at least 1/target_far impostor pairs.
        metric: the similarity the scores were computed with (``cosine``, ``dot`` or ``euclidean``; the
            aliases ``ip`` and ``l2`` are stored as ``dot`` and ``euclidean``), stored for readers of the
            calibration.

    Returns:
        {"metric", "threshold", "target_far", "threshold_ci": [lo, hi], "num_genuine", "num_impostor",
        "tar"} -- "tar" is the true accept rate at the threshold.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> scores = np.r_[rng.normal(0.7, 0.1, 500), rng.normal(0.1, 0.1, 5000)]
        >>> same = np.r_[np.ones(500, bool), np.zeros(5000, bool)]
        >>> round(calibrate_threshold(scores, same, target_far=1e-2)["threshold"], 2)
        0.33
        >>> calibrate_threshold(scores, same, target_far=1e-2, metric="ip", num_bootstrap=10)["metric"]
        'dot'
    """
    metric = canonical_metric(metric)
    scores, same = as_pairs(scores, same)
    num_impostor, num_genuine = int((~same).sum()), int(same.sum())
    target_far = check_rate("target_far", target_far)
    if not far_supported(num_impostor, target_far):
        raise ValueError(f"target_far={target_far} needs at least {math.ceil(1 / target_far)} impostor pairs, "
                         f"got {num_impostor}")
    if num_genuine == 0:
        raise ValueError("same has no genuine pairs; calibration needs both kinds")
    threshold = threshold_at_far(scores, same, target_far)
    low, high = bootstrap_ci(scores, same, lambda s, m: threshold_at_far(s, m, target_far),
                             num_bootstrap=num_bootstrap, seed=seed)
    return {"metric": metric, "threshold": threshold, "target_far": float(target_far),
            "threshold_ci": [low, high], "num_genuine": num_genuine, "num_impostor": num_impostor,
            "tar": float((scores[same] >= threshold).mean())}


def store_calibration(model_dir, calibration: dict) -> None:
    """Write ``calibration`` into ``model_dir/config.json`` (atomically) under the key "calibration"."""
    required = {"metric", "threshold", "target_far", "threshold_ci", "num_genuine", "num_impostor"}
    missing = required - set(calibration)
    if missing:
        raise ValueError(f"calibration is missing {sorted(missing)}; build it with calibrate_threshold")
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{model_dir} is not a model folder: no config.json")
    try:
        from deepmetric.models import update_model_config
    except ImportError:
        update_model_config = None
    if update_model_config is not None:
        update_model_config(model_dir, {"calibration": dict(calibration)})
        return
    from deepmetric.io import read_json, write_json

    config = read_json(config_path)
    config["calibration"] = dict(calibration)
    write_json(config_path, config)


def load_calibration(model_dir) -> dict | None:
    """The "calibration" dict of a model folder, or None when it has not been calibrated."""
    from deepmetric.io import read_json

    config = read_json(Path(model_dir) / "config.json")
    calibration = config.get("calibration")
    if calibration is not None and not np.isfinite(calibration.get("threshold", np.nan)):
        raise ValueError(f"{model_dir}/config.json has an invalid calibration threshold: {calibration!r}")
    return calibration
