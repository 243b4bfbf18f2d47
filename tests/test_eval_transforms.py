"""The released checkpoints' cfgs reproduce the reference's evaluation transform (resize, crop,
interpolation), as its experiment configs define it, through timm's resolve_data_config +
create_transform: so the published accuracies are reproducible with timm's own pipeline."""
import pytest
import timm
from torchvision import transforms as T

import timm_bcos  # noqa: F401
from timm_bcos.weights import RELEASES


def _reference_eval_transform(file: str):
    from bcos.experiments.utils import Experiment
    from bcos.models.pretrained import URLS

    (base, name), = [(b, n) for b, urls in URLS.items() for n, url in urls.items() if url.endswith("/" + file)]
    return Experiment("ImageNet", base, name).config["data"]["test_transform"]


@pytest.mark.parametrize("release", RELEASES, ids=lambda r: f"{r.model}.{r.tag}")
def test_cfg_reproduces_the_reference_eval_transform(release):
    ref = _reference_eval_transform(release.file)
    cfg = timm.data.resolve_data_config({}, pretrained_cfg=timm.models.get_pretrained_cfg(
        f"{release.model}.{release.tag}").to_dict())
    ours = timm.data.create_transform(**cfg).transforms
    resize = [t for t in ours if isinstance(t, T.Resize)]
    crop = [t for t in ours if isinstance(t, T.CenterCrop)]
    assert len(resize) == 1 and len(crop) == 1, ours
    assert resize[0].size == ref.resize.size, (release.file, resize[0].size, ref.resize.size)
    assert resize[0].interpolation == ref.resize.interpolation
    assert tuple(crop[0].size) == tuple(ref.center_crop.size)
    # B-cos input: plain [0, 1] RGB, the reference's ToTensor without normalisation
    assert cfg["mean"] == (0.0, 0.0, 0.0) and cfg["std"] == (1.0, 1.0, 1.0)


def test_every_release_is_checked():
    assert len(RELEASES) == 26
