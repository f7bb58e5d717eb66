"""Prediction heads for STARK-Lightning, generated from a spec. Knows nothing of training.

`layers` (what heads share with the backbone), `blocks` (the block registry), `corner` (the head), `spec` (what a
config may say about a head), `cost` (parameters and MACs before training)."""
from .blocks import BLOCKS, DepthwiseSeparableBlock, InvertedResidualBlock, block_options, build_block, \
    register_block
from .corner import CornerHead, SoftArgmax2d
from .layers import ACTIVATIONS, RepVGGBlock, make_activation, reparameterize
from .spec import HeadSpec, HeadSpecError, block_names, check_head_options, validate_head

__all__ = [
    "ACTIVATIONS", "BLOCKS", "CornerHead", "DepthwiseSeparableBlock", "HeadSpec", "HeadSpecError",
    "InvertedResidualBlock", "RepVGGBlock", "SoftArgmax2d", "block_names", "block_options", "build_block",
    "check_head_options", "make_activation", "register_block", "reparameterize", "validate_head",
]
