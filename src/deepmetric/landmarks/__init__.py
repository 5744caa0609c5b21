"""Landmark recognition and retrieval: the Google Landmarks pipeline (kNN voting, non-landmark suppression,
query expansion, database-side augmentation, whitening, multi-scale embedding)."""
