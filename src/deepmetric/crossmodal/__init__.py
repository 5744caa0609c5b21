"""Cross-modal metric learning: image and text towers in one space, and zero-shot recognition. Names load on
first use, so importing the package costs nothing."""

from __future__ import annotations

from deepmetric import lazy_exports

_EXPORTS = {
    "BidirectionalTripletLoss": "losses", "InfoNCELoss": "losses", "SigLIPLoss": "losses",
    "build_crossmodal_loss": "losses",
    "SentenceTextTower": "towers", "VocabularyTextTower": "towers", "TwoTowerModel": "towers",
    "build_text_tower": "towers", "load_sentence_encoder": "towers",
    "ZeroShotClassifier": "zeroshot", "search_images": "zeroshot",
    "CrossModalObjective": "training", "load_crossmodal_config": "training", "train_two_tower": "training",
    "class_texts": "texts", "load_unicode_texts": "unicode",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
