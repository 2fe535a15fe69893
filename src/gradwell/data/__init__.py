"""gradwell.data: datasets as checked train / validation / test tensors.

``load(name)`` reads mnist1d (generated), digits (scikit-learn), MNIST / Fashion-MNIST IDX
files, CSV and NPZ, and mnist, fashion_mnist and cifar10, downloaded once into a cache and
verified on every load (gradwell.data.download); images are kept as uint8 pixels, decoded a
batch at a time; ``standardize`` fits on the training split only, per feature or per channel;
``split_by_classes`` makes the chapter's task A / task B. Every problem raises
``gradwell.errors.DataError``.
"""

from gradwell.data.dataset import Affine, Dataset, Split
from gradwell.data.idx import read_idx
from gradwell.data.registry import DATASETS, describe, load
from gradwell.data.scaling import PER, Standardization, fit_standardization, standardize
from gradwell.data.splits import split_by_classes, subsample

__all__ = [
    "DATASETS",
    "PER",
    "Affine",
    "Dataset",
    "Split",
    "Standardization",
    "describe",
    "fit_standardization",
    "load",
    "read_idx",
    "split_by_classes",
    "standardize",
    "subsample",
]
