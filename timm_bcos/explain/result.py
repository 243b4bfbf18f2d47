"""The result of `model.explain()`."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor


@dataclass
class Explanation:
    """Explanations of K targets for each of N images.

    logits:        [N, C] model outputs (for a layer explanation: that layer's output).
    targets:       [N, K] explained classes (or channels of `layer`); for a Delta
                   explanation, the first class of each pair.
    weights:       [N, K, 6, H, W] rows of the dynamic linear map W_{1->l}(x) (Eq. 13-14),
                   with respect to the encoded input [r, g, b, 1-r, 1-g, 1-b].
    contributions: [N, K, H, W] Eq. 15 summed over the six channels.
    encoded_input: [N, 6, H, W] the input the weights apply to.
    explained:     [N, K] the explained values without the constant logit bias,
                   i.e. what `contributions` sum to (computed before the bias is added,
                   so it does not suffer cancellation).
    positions:     [N, K, 2] (row, col) of explained intermediate neurons, else None.
    fixed_shares:  {path: share} of each input-independent term the model adds (class token,
                   position embedding, a bias the recipe keeps; `model.bcos.fixed_terms`):
                   [N, K, T] per token, [N, K, H, W] per position, [N, K] for a bias.
                   contributions.sum((2, 3)) + fixed_share == explained, exactly.
    fixed_maps:    the token shares laid out on the patch grid, [N, K, h, w], where there is one.
    """

    logits: Tensor
    targets: Tensor
    weights: Tensor
    contributions: Tensor
    encoded_input: Tensor
    explained: Tensor
    positions: Tensor | None = None
    reference_targets: Tensor | None = None  # Delta explanations: the subtracted classes
    fixed_shares: dict[str, Tensor] = field(default_factory=dict)
    fixed_maps: dict[str, Tensor] = field(default_factory=dict)

    @property
    def fixed_share(self) -> Tensor:
        """[N, K] total share of the input-independent terms (zero for a model without any)."""
        total = torch.zeros_like(self.explained)
        for s in self.fixed_shares.values():
            total = total + s.flatten(2).sum(2) if s.dim() > 2 else total + s
        return total

    def rgba(self, smooth: int = 0, alpha_percentile: float = 99.5) -> np.ndarray:
        """[N, K, H, W, 4] images of the weights as in the paper (Sec. 4, "Visualisation details")."""
        from .render import weights_to_rgba

        return weights_to_rgba(self.weights, self.encoded_input, smooth=smooth, alpha_percentile=alpha_percentile)

    def to(self, device: torch.device | str) -> "Explanation":
        def move(v):
            if isinstance(v, dict):
                return {k: move(t) for k, t in v.items()}
            return v.to(device) if isinstance(v, Tensor) else v

        fields = {k: move(v) for k, v in self.__dict__.items()}
        return Explanation(**fields)
