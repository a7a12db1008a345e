"""Vector file formats, dataset preparation and exact ground truth (installed as ``spann.datasets``)."""

from spann.datasets.formats import (FORMATS, VectorFile, VectorWriter, check_finite, detect_format, open_vectors,
                                    read_vectors, write_vectors)
from spann.datasets.groundtruth import compute_ground_truth, ground_truth_files
from spann.datasets.registry import Manifest, list_datasets, load, prepare, register
from spann.datasets.synthetic import SyntheticSpec, synthetic_array, synthetic_blocks

__all__ = ["FORMATS", "VectorFile", "VectorWriter", "check_finite", "detect_format", "open_vectors",
           "read_vectors", "write_vectors", "compute_ground_truth", "ground_truth_files", "Manifest",
           "list_datasets", "load", "prepare", "register", "SyntheticSpec", "synthetic_array",
           "synthetic_blocks"]
