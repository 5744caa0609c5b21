"""Data sets (built-in, tables of image paths, face formats), the image decoder and image transforms.

Names load on first use, so the decoder (``deepmetric.data.images``) costs no torch; the registry imports the
data-set modules when a "dataset" is looked up.
"""

from __future__ import annotations

from deepmetric import lazy_exports

_EXPORTS = {
    "LabelledImages": "base",
    "Digits": "builtin", "FashionMNIST": "builtin", "read_idx": "builtin",
    "InsightFaceRecord": "faces", "LFWPairs": "faces", "RecordIOReader": "faces", "VerificationBin": "faces",
    "VerificationPairs": "faces", "read_lfw_pairs": "faces", "read_verification_bin": "faces",
    "unpack_record": "faces",
    "Glyphs": "glyphs",
    "CsvDataset": "table", "DataTable": "table", "ImageFolderDataset": "table", "image_folder_to_table": "table",
    "read_table": "table",
    "build_transforms": "transforms", "validate_preprocessing": "transforms",
    "load_image": "images",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
