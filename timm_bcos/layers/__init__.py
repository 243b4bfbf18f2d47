"""B-cos building blocks. Depends on torch only (no timm)."""
from .attention import BcosAttention, DetachableSoftmax, detachable_attention
from .bcos_conv import BcosConv2d, v1_output_scale
from .bcos_linear import BcosLinear
from .detach import DetachableModule, detachable_modules, explanation_mode
from .encoding import InputEncoding, NormalizedEncoding
from .gate import DetachableGate, DetachableSquaredReLU, GatedActivation
from .learned_b import learn_b
from .logit import LogitLayer, default_logit_bias
from .norms import (
    BatchNormActUncentered2d,
    BatchNormUncentered2d,
    DetachableGroupNorm2d,
    DetachableLayerNorm,
    DetachableLayerNorm2d,
    DetachablePositionNorm2d,
    GroupNormUncentered2d,
    PositionNormUncentered2d,
    drop_bias,
)
from .pos_embed import sincos_pos_embed
from .sync_norm import SyncBatchNormUncentered2d, convert_sync_batchnorm

__all__ = [
    "BatchNormActUncentered2d",
    "DetachableSquaredReLU",
    "GatedActivation",
    "NormalizedEncoding",
    "BatchNormUncentered2d",
    "BcosAttention",
    "BcosConv2d",
    "BcosLinear",
    "DetachableGate",
    "DetachableGroupNorm2d",
    "DetachableLayerNorm",
    "DetachableLayerNorm2d",
    "DetachableModule",
    "DetachableSoftmax",
    "DetachablePositionNorm2d",
    "GroupNormUncentered2d",
    "InputEncoding",
    "LogitLayer",
    "PositionNormUncentered2d",
    "SyncBatchNormUncentered2d",
    "convert_sync_batchnorm",
    "default_logit_bias",
    "detachable_attention",
    "detachable_modules",
    "drop_bias",
    "explanation_mode",
    "learn_b",
    "sincos_pos_embed",
    "v1_output_scale",
]
