"""Cross-modal metric learning: image and text towers in one space, and zero-shot recognition."""
