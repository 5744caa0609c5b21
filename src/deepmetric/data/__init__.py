"""Data sets (built-in, tables of image paths, face formats) and image transforms.

Importing this package registers the "dataset" components; heavy libraries load on first use.
"""

from deepmetric.data.base import LabelledImages
from deepmetric.data.builtin import Digits, FashionMNIST, read_idx
from deepmetric.data.faces import (InsightFaceRecord, LFWPairs, RecordIOReader, VerificationBin, VerificationPairs,
                                   read_lfw_pairs, read_verification_bin, unpack_record)
from deepmetric.data.glyphs import Glyphs
from deepmetric.data.table import CsvDataset, DataTable, ImageFolderDataset, image_folder_to_table, read_table
from deepmetric.data.transforms import build_transforms, validate_preprocessing

__all__ = ["CsvDataset", "DataTable", "Digits", "FashionMNIST", "Glyphs", "ImageFolderDataset", "InsightFaceRecord",
           "LFWPairs", "LabelledImages", "RecordIOReader", "VerificationBin", "VerificationPairs", "read_lfw_pairs",
           "read_verification_bin", "unpack_record",
           "build_transforms", "image_folder_to_table", "read_idx", "read_table", "validate_preprocessing"]
