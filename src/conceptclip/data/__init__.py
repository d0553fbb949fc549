"""Datasets, split manifests, the registry of named datasets and the frozen-feature cache."""

from conceptclip.data.dataset import Dataset, Sample, from_csv, from_folder, from_json
from conceptclip.data.feature_cache import FeatureCache
from conceptclip.data.images import load_image
from conceptclip.data.registry import DatasetEntry, dataset_entry, load_dataset, register_dataset
from conceptclip.data.splits import Split, base2novel_split, fewshot_split, holdout_split, write_split

__all__ = ["Dataset", "Sample", "from_csv", "from_folder", "from_json", "load_dataset", "DatasetEntry",
           "dataset_entry", "register_dataset", "FeatureCache", "load_image", "Split", "base2novel_split",
           "fewshot_split", "holdout_split", "write_split"]
