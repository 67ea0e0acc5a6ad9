"""Input pipeline: upstream's dataset pickles (read safely), validation, upstream's collate, length buckets,
the grain loader, packed splits and the embedded synthetic dataset."""

from .buckets import DEFAULT_BUCKETS, bucket_length
from .collate import (
    MIN_CLIPS,
    TRAIN_WINDOW,
    BatchPlan,
    ReplayRandInt,
    ShortBatchError,
    mask_for,
    plan_seeded,
    plan_upstream,
)
from .fingerprint import Fingerprint
from .index import (
    BadFileError,
    DatasetError,
    UnsafePickleError,
    VideoIndex,
    load_index,
    modality_paths,
    remap_root,
    safe_load_pickle,
    write_index,
)
from .pipeline import BatchLoader
from .source import FeatureSource, FileSource, PackedSource, StalePackWarning, default_pack_dir, open_split
from .validate import Problem, ScanResult, check_split, scan

__all__ = [
    "DEFAULT_BUCKETS", "MIN_CLIPS", "TRAIN_WINDOW", "BadFileError", "BatchLoader", "BatchPlan", "DatasetError",
    "FeatureSource", "FileSource", "Fingerprint", "PackedSource", "Problem", "ReplayRandInt", "ScanResult",
    "ShortBatchError", "StalePackWarning", "UnsafePickleError", "VideoIndex", "bucket_length", "check_split",
    "default_pack_dir", "load_index", "mask_for", "modality_paths", "open_split", "plan_seeded",
    "plan_upstream", "remap_root", "safe_load_pickle", "scan", "write_index",
]
