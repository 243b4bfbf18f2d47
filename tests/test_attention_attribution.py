"""Attention rollout and Chefer et al.'s gradient-weighted rollout (timm_bcos.eval.attention_attribution):
the propagation rules on matrices worked out by hand, the attention a B-cos ViT keeps against its own
forward, and the maps on a real B-cos ViT."""
import pytest
import timm
import torch

import timm_bcos  # noqa: F401
from timm_bcos.eval import attention_attribution as aa
from timm_bcos.eval.attribution import attribution_maps
from timm_bcos.layers import explanation_mode


def _every_row_attends_to(j: int, t: int) -> torch.Tensor:
    a = torch.zeros(1, 2, t, t, dtype=torch.float64)
    a[..., j] = 1.0
    return a


def test_rollout_by_hand():
    """Every row attending to token j (J = 1 e_j^T, J^2 = J): one block gives 0.5 J + 0.5 I, two give
    0.75 J + 0.25 I; blocks compose last on the left; uniform attention U stays uniform (U^2 = U)."""
    t, j = 4, 2
    eye, J = torch.eye(t, dtype=torch.float64), torch.zeros(t, t, dtype=torch.float64)
    J[:, j] = 1
    a = _every_row_attends_to(j, t)
    assert torch.allclose(aa.rollout([a])[0], 0.5 * J + 0.5 * eye)
    assert torch.allclose(aa.rollout([a, a])[0], 0.75 * J + 0.25 * eye)
    # the first block's attention is applied first: block 1 to token 0, then block 2 to token 1 gives
    # (0.5 J1 + 0.5 I)(0.5 J0 + 0.5 I) = 0.5 J0 + 0.25 J1 + 0.25 I (J1 J0 = J0): token 0 leads
    J0, J1 = torch.zeros(t, t, dtype=torch.float64), torch.zeros(t, t, dtype=torch.float64)
    J0[:, 0], J1[:, 1] = 1, 1
    got = aa.rollout([_every_row_attends_to(0, t), _every_row_attends_to(1, t)])[0]
    assert torch.allclose(got, 0.5 * J0 + 0.25 * J1 + 0.25 * eye)
    uniform = torch.full((1, 3, t, t), 1 / t, dtype=torch.float64)
    assert torch.allclose(aa.rollout([uniform, uniform, uniform])[0].mean(0), torch.full((t,), 1 / t, dtype=torch.float64))


def test_gradient_weighted_rollout_by_hand():
    """R = (I + M2)(I + M1), M = mean over heads of (grad * A) with negative entries dropped."""
    a1 = torch.tensor([[[[0.5, 0.5], [0.25, 0.75]], [[1.0, 0.0], [0.5, 0.5]]]], dtype=torch.float64)
    g1 = torch.tensor([[[[0.4, -1.0], [0.8, 0.4]], [[-2.0, 3.0], [0.2, 0.6]]]], dtype=torch.float64)
    # (g1 * a1)^+: head 0 [[0.2, 0], [0.2, 0.3]], head 1 [[0, 0], [0.1, 0.3]]; mean [[0.1, 0], [0.15, 0.3]]
    a2 = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    g2 = torch.tensor([[[[1.0, 0.0], [-1.0, 2.0]]]], dtype=torch.float64)  # M2 = [[0.5, 0], [0, 1]]
    expected = torch.tensor([[1.5, 0.0], [0.0, 2.0]], dtype=torch.float64) @ torch.tensor(
        [[1.1, 0.0], [0.15, 1.3]], dtype=torch.float64)
    assert torch.allclose(aa.gradient_weighted_rollout([a1, a2], [g1, g2])[0], expected)


@pytest.fixture(scope="module")
def vit():
    """A 2-block B-cos ViT-Ti at 64 px (a 4x4 grid of patch tokens), float64."""
    torch.manual_seed(0)
    model = timm.create_model("bcos_simple_vit_ti_patch16_224", depth=2, img_size=64, num_classes=5)
    return model.double().eval(), torch.rand(3, 3, 64, 64, dtype=torch.float64)


def test_kept_attention_is_what_the_forward_applies(vit):
    model, x = vit
    with torch.no_grad():
        plain = model(x)
        with aa.kept_attention(model) as blocks:
            kept = model(x)
            attentions = [m.attention for m in blocks]
    assert torch.allclose(kept, plain, rtol=1e-12, atol=1e-12)  # the explicit matrix is SDPA's
    assert len(attentions) == 2 and all(a.shape == (3, 3, 16, 16) for a in attentions)
    assert all(torch.allclose(a.sum(-1), torch.ones(3, 3, 16, dtype=torch.float64)) for a in attentions)
    assert all(not m.keep_attention and m.attention is None for m in blocks)  # nothing kept afterwards


def test_maps_on_a_b_cos_vit(vit):
    """Rollout is class-agnostic; Chefer et al.'s map depends on the class and equals the rule applied to
    the gradients autograd gives for each block's attention; parameters' gradients are left alone."""
    model, x = vit
    maps = {m: attribution_maps(model, x, torch.tensor([0, 1, 2]), m) for m in ("rollout", "chefer")}
    assert all(a.shape == (3, 64, 64) and torch.isfinite(a).all() for a in maps.values())
    assert torch.allclose(attribution_maps(model, x, torch.tensor([4, 4, 4]), "rollout"), maps["rollout"])
    other = attribution_maps(model, x, torch.tensor([4, 4, 4]), "chefer")
    assert not torch.allclose(other, maps["chefer"])
    assert all(p.grad is None for p in model.parameters())
    frozen = attribution_maps(model.requires_grad_(False), x, torch.tensor([0, 1, 2]), "chefer")  # weights frozen
    model.requires_grad_(True)
    assert torch.allclose(frozen, maps["chefer"])
    with explanation_mode(model), pytest.raises(ValueError, match="outside timm_bcos.layers.explanation_mode"):
        attribution_maps(model, x, torch.tensor([0, 1, 2]), "chefer")
    # the first image's class-0 map, from the attention's gradient taken by hand (one image at a time)
    with aa.kept_attention(model) as blocks:
        y = model(x[:1])[0, 0]
        atts = [m.attention for m in blocks]
        grads = torch.autograd.grad(y, atts)
    r = aa.gradient_weighted_rollout([a.detach() for a in atts], list(grads))[0]
    tokens = r.mean(0).view(1, 1, 4, 4)  # avg pool: the mean of the patch tokens' rows
    expected = torch.nn.functional.interpolate(tokens, size=(64, 64), mode="bilinear", align_corners=False)[0, 0]
    assert torch.allclose(maps["chefer"][0], expected)


def test_a_model_without_b_cos_attention_is_refused():
    with pytest.raises(ValueError, match="no BcosAttention blocks: attention-based attributions need a B-cos"):
        attribution_maps(timm.create_model("bcos_cifar10", width=0.125), torch.rand(1, 3, 32, 32),
                         torch.tensor([0]), "rollout")
