"""Training with explanations: losses on a B-cos model's own contribution maps where
annotations say the evidence should (or should not) be (Rao et al., ICCV 2023; Ross et al.,
IJCAI 2017). `guided_loss` is the one call a training step makes."""
from .contributions import contribution_maps, guidance_layer
from .data import AnnotatedImageDataset, boxes_to_mask, collate_annotated, is_annotated
from .losses import GUIDANCE_LOSSES, energy_loss, guidance_loss, l1_loss, ppce_loss, rrr_loss
from .masks import decode_mask
from .step import guided_loss

__all__ = [
    "AnnotatedImageDataset", "GUIDANCE_LOSSES", "boxes_to_mask", "collate_annotated", "contribution_maps",
    "decode_mask", "energy_loss", "guidance_layer", "guidance_loss", "guided_loss", "is_annotated", "l1_loss",
    "ppce_loss", "rrr_loss",
]
