"""torch.fx: the B-cos layers are leaves of timm's tracer (as timm's own layers with
data-dependent branches are), so `create_feature_extractor` / timm's fx features work.
The models' minimum-size check is skipped while tracing (timm_bcos.convert.runtime.BcosModelMixin.forward_features)."""
from timm.layers import register_notrace_module

from ..layers import InputEncoding, LogitLayer
from ..layers.affine import Scale
from ..layers.detach import DetachableModule

for _cls in (DetachableModule, InputEncoding, LogitLayer, Scale):  # isinstance: covers every subclass
    register_notrace_module(_cls)
