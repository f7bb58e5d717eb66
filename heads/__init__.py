"""Prediction heads for STARK-Lightning, generated from a spec. Knows nothing of training."""
from .activations import ACTIVATIONS, make_activation
from .blocks import BLOCKS, DepthwiseSeparableBlock, InvertedResidualBlock, RepVGGBlock, block_options, \
    build_block, register_block, reparameterize
from .corner import CornerHead, SoftArgmax2d
from .spec import HeadSpec, HeadSpecError, block_names, check_head_options, validate_head

__all__ = [
    "ACTIVATIONS", "BLOCKS", "CornerHead", "DepthwiseSeparableBlock", "HeadSpec", "HeadSpecError",
    "InvertedResidualBlock", "RepVGGBlock", "SoftArgmax2d", "block_names", "block_options", "build_block",
    "check_head_options", "make_activation", "register_block", "reparameterize", "validate_head",
]
