"""Composite blocks whose own forward only combines what their children compute: sums
(residuals), concatenations, splits, reshapes, routing, pooling, and products with gates that
are detached in explanation mode. The walker converts their children; a composite that is
neither here nor in a family's rules is refused (`ConversionError`), because its own forward
might compute something that is not dynamic linear (timm's StarReLU, s relu(x)^2 + b, holds an
nn.ReLU child: walking into it silently would leave a quadratic).

Each class is certified by `verify()` (y = J(x) x in explanation mode) on a model that uses it,
in tests/test_families.py. A class that this timm does not have is skipped.
"""
from __future__ import annotations

import importlib

CERTIFIED = {
    "timm.layers.adaptive_avgmax_pool": ("SelectAdaptivePool2d",),
    "timm.layers.classifier": ("ClNormMlpClassifierHead", "ClassifierHead", "NormMlpClassifierHead",),
    "timm.layers.conv_bn_act": ("ConvNormAct",),
    "timm.layers.mlp": ("ConvMlp", "GlobalResponseNormMlp", "Mlp",),
    "timm.layers.patch_embed": ("PatchEmbed",),
    "timm.layers.split_attn": ("SplitAttn",),
    "timm.layers.squeeze_excite": ("EffectiveSEModule", "SEModule",),
    "timm.models._efficientnet_blocks": (
        "ConvBnAct", "DepthwiseSeparableConv", "EdgeResidual", "InvertedResidual", "SqueezeExcite", "UniversalInvertedResidual",
    ),
    "timm.models.beit": ("Block",),
    "timm.models.byobnet": (
        "BasicBlock", "BottleneckBlock", "DarkBlock", "DownsampleAvg", "EdgeBlock", "MobileOneBlock", "RepVggBlock",
    ),
    "timm.models.convmixer": ("Residual",),
    "timm.models.convnext": ("ConvNeXtBlock", "ConvNeXtStage",),
    "timm.models.cspnet": ("BottleneckBlock", "CrossStage", "DarkBlock",),
    "timm.models.densenet": ("DenseBlock", "DenseLayer",),
    "timm.models.dla": ("DlaBasic", "DlaBottleneck", "DlaRoot", "DlaTree",),
    "timm.models.dpn": ("BnAct", "BnActConv2d", "DualPathBlock",),
    "timm.models.edgenext": ("ConvBlock", "EdgeNeXtStage", "SplitTransposeBlock",),
    "timm.models.efficientformer": (
        "ConvMlpWithNorm", "Downsample", "EfficientFormerStage", "MetaBlock1d", "MetaBlock2d", "Pooling",
    ),
    "timm.models.efficientvit_mit": (
        "ClassifierHead", "ConvNormAct", "DSConv", "EfficientVitBlock", "EfficientVitStage", "MBConv", "ResidualBlock",
    ),
    "timm.models.eva": ("EvaBlock",),
    "timm.models.fastvit": (
        "ConvMlp", "FastVitStage", "MobileOneBlock", "PatchEmbed", "RepMixer", "RepMixerBlock", "ReparamLargeKernelConv",
    ),
    "timm.models.ghostnet": ("GhostBottleneck", "GhostModule", "GhostModuleV2",),
    "timm.models.hgnet": (
        "ClassifierHead", "ConvBNAct", "HighPerfGpuBlock", "HighPerfGpuStage", "LightConvBNAct", "StemV2",
    ),
    "timm.models.hrnet": ("HighResolutionModule", "SequentialList",),
    "timm.models.inception_next": (
        "ConvMlp", "InceptionDWConv2d", "MetaNeXtBlock", "MetaNeXtStage", "MlpClassifierHead",
    ),
    "timm.models.inception_v3": ("InceptionA", "InceptionC", "InceptionE",),
    "timm.models.levit": (
        "ConvNorm", "LevitBlock", "LevitDownsample", "LevitMlp", "LevitStage", "LinearNorm", "NormLinear",
    ),
    "timm.models.mambaout": ("DownsampleNormFirst", "MambaOutStage", "Stem",),
    "timm.models.maxxvit": (
        "Downsample2d", "MaxxVitBlock", "MaxxVitStage", "MbConvBlock", "PartitionAttentionCl", "Stem", "TransformerBlock2d",
    ),
    "timm.models.metaformer": ("Downsampling", "MetaFormerBlock", "MetaFormerStage", "MlpHead", "Pooling", "SepConv", "Stem",),
    "timm.models.mlp_mixer": ("MixerBlock",),
    "timm.models.mobilevit": ("LinearTransformerBlock", "MobileVitBlock", "MobileVitV2Block",),
    "timm.models.nfnet": ("DownsampleAvg", "NormFreeBlock",),
    "timm.models.pvt_v2": ("Block", "MlpWithDepthwiseConv", "OverlapPatchEmbed", "PyramidVisionTransformerStage",),
    "timm.models.regnet": ("Bottleneck", "RegStage",),
    "timm.models.res2net": ("Bottle2neck",),
    "timm.models.resnest": ("ResNestBottleneck",),
    "timm.models.resnet": ("BasicBlock", "Bottleneck",),
    "timm.models.resnetv2": ("DownsampleConv", "PreActBasic", "ResNetStage",),
    "timm.models.rexnet": ("LinearBottleneck",),
    "timm.models.selecsls": ("SelecSlsBlock", "SequentialList",),
    "timm.models.swin_transformer": ("PatchMerging", "SwinTransformerBlock", "SwinTransformerStage",),
    "timm.models.tiny_vit": (
        "ConvLayer", "MBConv", "NormMlp", "PatchEmbed", "PatchMerging", "TinyVitBlock", "TinyVitStage",
    ),
    "timm.models.tresnet": ("BasicBlock", "Bottleneck",),
    "timm.models.twins": ("Block", "PatchEmbed", "PosConv",),
    "timm.models.vgg": ("ConvMlp",),
    "timm.models.vision_transformer": ("Block",),
    "timm.models.vovnet": ("OsaBlock", "OsaStage", "SequentialAppendList",),
    "timm.models.xception_aligned": ("SeparableConv2d", "XceptionModule",),
}


_CLASSES: set[type] = set()


def certified_composites() -> set[type]:
    """The certified classes (imported on first use; names this timm lacks are skipped)."""
    if not _CLASSES:
        for module, names in CERTIFIED.items():
            try:
                mod = importlib.import_module(module)
            except ImportError:
                continue
            _CLASSES.update(getattr(mod, n) for n in names if hasattr(mod, n))
    return _CLASSES


def is_certified(module) -> bool:
    """A certified composite, or a timm model nested in another module: its forward is
    forward_features + forward_head, trusted as the root model's is (the walk starts below
    the root), and its blocks are held to the same rules."""
    if type(module) in certified_composites():
        return True
    return hasattr(module, "pretrained_cfg") and callable(getattr(module, "forward_head", None))


def register_composite(*classes: type) -> None:
    """Certify a family's own composite blocks (their forward combines their children linearly)."""
    certified_composites().update(classes)
