"""`python -m timm_bcos atlas ...`: the concept atlas of one layer as a static page (see atlas/run.py)."""
from __future__ import annotations

import argparse

from ..utils.options import add_options, option_names


def atlas_main(args: argparse.Namespace) -> int:
    from ..data.datasets import DataError
    from .run import AtlasConfig, build_atlas
    from .scan import AtlasError

    try:
        config = AtlasConfig(**{k: v for k, v in vars(args).items() if k in option_names(AtlasConfig)})
        index = build_atlas(config)
    except (AtlasError, DataError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"scanned {index['images_scanned']} images in {index['seconds']}s; "
          f"{len(index['neurons'])} neurons of {config.layer}: {config.out}/index.html")
    return 0


def add_atlas_parser(sub) -> None:
    from .run import AtlasConfig

    p = sub.add_parser("atlas", help="what each neuron of a layer responds to: its top images of a data set, "
                                     "explained (paper Figs. 8, 10), as a static page")
    add_options(p, AtlasConfig)
    p.set_defaults(func=atlas_main)
