"""STARK-Lightning: the backbone, the transformer, the model that joins them to a head, and its checkpoints
(ours and the official file). `tracker.model.StarkLightning` is the `_target_` every stored config names."""
from .stark import TRUNK_PREFIXES, StarkLightning, TemplateMemory

__all__ = ["TRUNK_PREFIXES", "StarkLightning", "TemplateMemory"]
