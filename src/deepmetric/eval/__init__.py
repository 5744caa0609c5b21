"""Evaluation: pure metric functions (retrieval, verification, identification, few-shot, clustering),
evaluators returning ``dict[str, float]`` (registered as kind "evaluator"), threshold calibration, plots, an
HTML report, and the ``evaluate(config)`` pipeline that ties them together.

Submodules load on first use, so ``import deepmetric.eval`` stays light.
"""

from __future__ import annotations

from deepmetric import lazy_exports

_EXPORTS = {
    "recall_at_k": "retrieval", "precision_at_k": "retrieval", "r_precision": "retrieval",
    "map_at_r": "retrieval", "mean_average_precision": "retrieval", "global_average_precision": "retrieval",
    "revisited_oxford_paris": "retrieval", "search_neighbours": "retrieval",
    "roc": "verification", "auc": "verification", "eer": "verification", "tar_at_far": "verification",
    "verification_kfold": "verification", "best_threshold": "verification", "pair_scores": "verification",
    "cmc": "identification", "dir_at_far": "identification", "distractor_curve": "identification",
    "make_templates": "identification",
    "fewshot_accuracy": "fewshot",
    "nmi": "clustering", "ami": "clustering",
    "calibrate_threshold": "calibration", "store_calibration": "calibration", "load_calibration": "calibration",
    "RetrievalEvaluator": "evaluators", "VerificationEvaluator": "evaluators",
    "IdentificationEvaluator": "evaluators", "FewShotEvaluator": "evaluators", "ClusteringEvaluator": "evaluators",
    "query_gallery_rows": "evaluators",
    "evaluate": "pipeline", "EvaluationResult": "pipeline",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
