"""Evaluation: pure metric functions (retrieval, verification, identification, few-shot, clustering),
evaluators returning ``dict[str, float]`` (registered as kind "evaluator"), threshold calibration, plots, an
HTML report, and the ``evaluate(config)`` pipeline that ties them together.

Submodules load on first use, so ``import deepmetric.eval`` stays light.
"""

from __future__ import annotations

from deepmetric import lazy_exports

# Which submodule defines each public name, grouped by submodule.
_BY_MODULE = {
    "retrieval": ("recall_at_k", "precision_at_k", "r_precision", "map_at_r", "mean_average_precision",
                  "global_average_precision", "gap_from_predictions", "gap_from_solution",
                  "map_at_k_from_predictions", "revisited_ap", "revisited_from_rankings", "revisited_oxford_paris",
                  "search_neighbours"),
    "verification": ("roc", "auc", "eer", "tar_at_far", "verification_kfold", "best_threshold", "pair_scores"),
    "identification": ("cmc", "dir_at_far", "distractor_curve", "make_templates"),
    "fewshot": ("fewshot_accuracy",),
    "clustering": ("nmi", "ami"),
    "calibration": ("calibrate_threshold", "store_calibration", "load_calibration"),
    "evaluators": ("RetrievalEvaluator", "VerificationEvaluator", "IdentificationEvaluator", "FewShotEvaluator",
                   "ClusteringEvaluator", "query_gallery_rows"),
    "pipeline": ("evaluate", "EvaluationResult"),
}
_EXPORTS = {name: module for module, names in _BY_MODULE.items() for name in names}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
