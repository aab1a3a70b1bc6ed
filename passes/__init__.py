"""The standard passes, one file each; the file name is the pass name."""
from .calibrate import Calibrate
from .clip_ranges import ClipRanges
from .correct_bias import CorrectBias
from .fold_batchnorm import FoldBatchNorm
from .fuse_patterns import FusePatterns
from .fuse_qdq import FuseQDQ
from .insert_observers import InsertObservers
from .lower_to_integer import LowerToInteger
from .quantize_weights import QuantizeWeights
from .smooth_activations import SmoothActivations

__all__ = ["FoldBatchNorm", "SmoothActivations", "QuantizeWeights", "FusePatterns", "InsertObservers", "Calibrate", "ClipRanges", "CorrectBias",
           "FuseQDQ", "LowerToInteger"]
