"""A Captum-style entry for the model's own explanation.

`BcosAttribution(model).attribute(inputs, target)` returns attributions with the
shape of `inputs` ([N, 3, H, W]), like Captum's `InputXGradient` etc., so that
evaluation code treats the B-cos contributions and post-hoc methods alike. Each
RGB channel c receives the contributions of its two encoded channels,
w_c * x_c + w_{c+3} * (1 - x_c), so the attributions sum to the logit minus
its bias (Eq. 15).
"""
from __future__ import annotations

from torch import Tensor, nn

from .explain import explain


class BcosAttribution:
    """Model-inherent contributions with Captum's `attribute(inputs, target)` convention."""

    multiplies_by_inputs = True

    def __init__(self, model: nn.Module) -> None:
        if not hasattr(model, "input_encoding"):
            raise TypeError(f"{type(model).__name__} is not a timm_bcos model (no input encoding)")
        self.forward_func = model

    def has_convergence_delta(self) -> bool:
        return False

    def attribute(self, inputs: Tensor, target=None, additional_forward_args=None) -> Tensor:
        if additional_forward_args is not None:
            raise ValueError("B-cos models take no additional forward args")
        if target is not None and not isinstance(target, int):
            target = target if isinstance(target, Tensor) else list(target)
        expl = explain(self.forward_func, inputs, target)
        per_channel = expl.weights[:, 0] * expl.encoded_input  # [N, 6, H, W]
        c = per_channel.shape[1] // 2
        return (per_channel[:, :c] + per_channel[:, c:]).to(inputs.dtype)
