"""What each neuron has learned: the images that drive a layer's channels most, explained (paper Figs. 8, 10).

`build_atlas(AtlasConfig(...))` or `python -m timm_bcos atlas ...`: a streamed scan of a data set keeps
each channel's top images (`ChannelTopK`), then each is explained at its neuron's position and written
as a static page (index.html), PNGs and index.json."""
from .run import AtlasConfig, build_atlas
from .scan import AtlasError, scan_layer
from .topk import ChannelTopK

__all__ = ["AtlasConfig", "AtlasError", "ChannelTopK", "build_atlas", "scan_layer"]
