"""The generic rule table: which rule converts each module type of torch and timm.

Families with special needs register their own rules beside their entrypoints
(`from timm_bcos.convert import register_family`); the table knows no family of its own.
"""
from __future__ import annotations

from torch import nn

from .. import layers as L
from ..layers import affine as LA
from . import attention_rules as A
from . import rules as R
from .walker import Rule, RuleTable, classes_by_name, keep, recurse

# activation -> what B-cosification does with it (rules.activation_rule): "keep" for the positively
# homogeneous piecewise-linear ones, the gate g of a self-gated x * g(x), None: removed
_ACTIVATIONS = {
    nn.ReLU: "keep", nn.LeakyReLU: "keep", nn.PReLU: "keep",
    nn.GELU: "gelu", nn.SiLU: "silu", nn.Hardswish: "hard_swish", nn.Mish: "mish",
    nn.ReLU6: None, nn.ELU: None, nn.CELU: None, nn.SELU: None, nn.Tanh: None, nn.Softplus: None, nn.Hardtanh: None,
}

_TORCH: dict[type, Rule] = {
    # already B-cos
    **{t: keep for t in (
        L.BcosConv2d, L.BcosLinear, L.BcosAttention, L.DetachableSoftmax, L.InputEncoding, L.LogitLayer, L.DetachableGate,
        L.BatchNormUncentered2d, L.GroupNormUncentered2d, L.DetachableGroupNorm2d, L.DetachableLayerNorm,
        L.DetachablePositionNorm2d, L.PositionNormUncentered2d, L.GatedActivation, L.DetachableSquaredReLU,
        L.NormalizedEncoding, LA.Scale, LA.DetachableGlobalResponseNorm, LA.DetachableRadixSoftmax,
        LA.DetachableDropout,
    )},
    nn.Conv2d: R.conv_rule,
    nn.Linear: R.linear_rule,
    nn.BatchNorm2d: R.batch_norm_rule,
    nn.LayerNorm: R.layer_norm_rule,
    nn.GroupNorm: R.group_norm_rule,
    nn.BatchNorm1d: R.batch_norm1d_rule,
    **{t: R.activation_rule(kind) for t, kind in _ACTIVATIONS.items()},
    nn.Sigmoid: R.gate_rule("sigmoid"),
    nn.Softmax: A.softmax_rule,
    nn.Hardsigmoid: R.gate_rule("hard_sigmoid"),
    nn.MaxPool2d: R.max_pool_rule,
    nn.AdaptiveMaxPool2d: R.adaptive_max_pool_rule,
    # parameter-free linear plumbing
    **{t: keep for t in (
        nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
        nn.ZeroPad2d, nn.Upsample,
    )},
    nn.Sequential: recurse, nn.ModuleList: recurse, nn.ModuleDict: recurse,
}

_TIMM_LAYERS: dict[str, Rule] = {
    "timm.layers.norm.LayerNorm2d": R.layer_norm2d_rule,
    "timm.layers.Conv2dSame": R.unsupported("TF 'SAME' padding is computed per input size"),
    "timm.layers.activations.Swish": R.activation_rule("silu"), "timm.layers.activations.Mish": R.activation_rule("mish"),
    "timm.layers.activations.HardSwish": R.activation_rule("hard_swish"),
    "timm.layers.activations.HardMish": R.activation_rule(None),
    "timm.layers.activations.GELU": R.activation_rule("gelu"),
    "timm.layers.activations.GELUTanh": R.activation_rule("gelu_tanh"),
    "timm.layers.activations.QuickGELU": R.activation_rule("quick_gelu"),
    "timm.layers.activations.PReLU": R.activation_rule("keep"),
    "timm.layers.activations.Tanh": R.activation_rule(None),
    "timm.layers.norm_act.BatchNormAct2d": R.batch_norm_act_rule,  # its activation follows the recipe
    "timm.models.metaformer.StarReLU": R.squared_relu_rule,       # s relu(x)^2 + b: one relu detached, b dropped
    "timm.models.metaformer.SquaredReLU": R.squared_relu_rule,    # relu(x)^2: same
    "timm.layers.activations.Sigmoid": R.gate_rule("sigmoid"),
    "timm.layers.activations.HardSigmoid": R.gate_rule("hard_sigmoid"),
    "timm.layers.activations_me.SwishMe": R.activation_rule("silu"),
    "timm.layers.activations_me.HardSwishMe": R.activation_rule("hard_swish"),
    "timm.layers.activations_me.HardSigmoidMe": R.gate_rule("hard_sigmoid"),
    "timm.layers.DropPath": keep,
    "timm.layers.Attention": A.timm_attention_rule,
    "timm.layers.adaptive_avgmax_pool.FastAdaptiveAvgPool": keep,
    "timm.layers.adaptive_avgmax_pool.AdaptiveAvgMaxPool2d": R.unsupported("avg+max pooling; use global_pool='avg'"),
    # building blocks; each line says why it stays W(x) x in explanation mode
    "timm.layers.grn.GlobalResponseNorm": R.grn_rule,          # x * (1 + gamma N(x)), N detached, bias dropped
    "timm.layers.blur_pool.BlurPool2d": keep,                 # a fixed low-pass filter: linear
    "timm.layers.space_to_depth.SpaceToDepth": R.space_to_depth_rule,  # a permutation of pixels into channels
    "timm.layers.space_to_depth.DepthToSpace": keep,          # its inverse permutation
    "timm.layers.split_attn.RadixSoftmax": R.radix_softmax_rule,  # softmax gate over branches, detached
    "timm.layers.pos_embed_rel.RelPosBias": keep,             # added to attention logits, detached with them
    "timm.layers.pos_embed_rel.RelPosBiasTf": keep,           # same
    "timm.layers.pos_embed_rel.RelPosMlp": keep,              # same (an MLP of fixed coordinates)
    "timm.layers.pos_embed_sincos.RotaryEmbeddingCat": keep,  # rotates q and k only, which are detached
    "timm.layers.pos_embed_sincos.RotaryEmbedding": keep,     # same
    "timm.layers.mlp.SwiGLU": R.glu_gate_rule,                # act(x_gate) * x: a detached gate
    "timm.layers.mlp.GluMlp": R.glu_gate_rule,                # same
    "timm.layers.layer_scale.LayerScale": keep,               # per-channel scale
    "timm.layers.layer_scale.LayerScale2d": keep,             # per-channel scale
}

# the model files' own small modules, by family (timm models without a bcos_* entrypoint of their own)
_TIMM_MODELS: dict[str, Rule] = {
    "timm.models.swin_transformer.WindowAttention": A.unfused_attention_rule,  # swin: explicit softmax path
    "timm.models.metaformer.Scale": keep,                     # poolformer/convformer: per-channel scale
    "timm.models.fastvit.LayerScale2d": keep,                 # fastvit: per-channel scale
    "timm.models.efficientformer.Flat": keep,                 # efficientformer: flatten + transpose
    "timm.models.hgnet.LearnableAffineBlock": R.affine_scale_rule,  # hgnet: scale * x + bias, bias dropped
    "timm.models.selecsls.SelectSeq": keep,                   # selecsls: picks or concatenates branches
    "timm.models.beit.Attention": A.attention_qkv_bias_rule,  # beit: q/v biases dropped, attention detached
    "timm.models.eva.EvaAttention": A.attention_qkv_bias_rule,  # eva: same
    "timm.models.edgenext.CrossCovarianceAttn": A.functional_softmax_rule,  # edgenext: channel attention detached
    "timm.models.levit.Attention": A.functional_softmax_rule,  # levit: attention detached
    "timm.models.levit.AttentionDownsample": A.functional_softmax_rule,
    "timm.models.efficientformer.Attention": A.functional_softmax_rule,  # efficientformer: attention detached
    "timm.models.mambaout.GatedConvBlock": R.glu_gate_rule,   # mambaout: act(g) * x, a detached gate
    "timm.models.levit.Downsample": keep,                     # levit: token subsampling (a selection)
    "timm.models.edgenext.PositionalEncodingFourier": keep,   # edgenext: input-independent, a fixed term
    "timm.models.mobilevit.LinearSelfAttention": A.mobilevit_linear_attention_rule,  # v * context, context detached
    "timm.models.efficientvit_mit.LiteMLA": A.lite_mla_rule,  # efficientvit: ReLU linear attention A(q, k) v, A detached
}

# classes of newer timm releases than the oldest one supported: used where this timm has them
_TIMM_NEWER: dict[str, Rule] = {
    "timm.layers.pos_embed_sincos.RotaryEmbeddingDinoV3": keep,  # DINOv3 (timm 1.0.20): rotates q and k only
}

GENERIC_RULES = RuleTable(
    types={**_TORCH, **classes_by_name({**_TIMM_LAYERS, **_TIMM_MODELS}), **classes_by_name(_TIMM_NEWER, missing_ok=True)},
    markers={"fused_attn": A.functional_softmax_rule},  # timm marks its attention blocks with `fused_attn`
)
