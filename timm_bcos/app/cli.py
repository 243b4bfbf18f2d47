"""`python -m timm_bcos app ...` (and `timm-bcos app`): serve the explorer on a local address."""
from __future__ import annotations

import argparse

from .engine import DEFAULT_MODEL


def app_main(args: argparse.Namespace) -> int:
    try:
        from .layout import launch
    except ImportError as e:
        raise SystemExit(f"error: the explorer needs the app extra ({e}); "
                         f"install it with: pip install 'timm_bcos[app]'") from None
    from .engine import Explorer, load_model

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # small models answer faster on one thread of a busy CPU
    default = args.model is None
    name = DEFAULT_MODEL if default else args.model
    pretrained = args.pretrained or (default and not args.checkpoint)
    if not (pretrained or args.checkpoint):
        print(f"note: {name} has random weights; give --pretrained or --checkpoint for a trained model")
    from .atlas_tab import load_atlases

    try:
        model = load_model(name, pretrained=pretrained, checkpoint=args.checkpoint)
        atlases = load_atlases(args.atlas or [])
        explorer = Explorer(model, name)
        explorer.add_layers([index["layer"] for index in atlases.values()])
    except (ValueError, FileNotFoundError, RuntimeError, AttributeError) as e:
        raise SystemExit(f"error: {e}") from None
    for index in atlases.values():
        if index["model"] != name:
            print(f"note: the atlas {index['folder']} was built with {index['model']}; the explorer serves {name}")
    launch(explorer, host=args.host, port=args.port, atlases=atlases)
    return 0


def add_app_parser(sub) -> None:
    p = sub.add_parser("app", help="the interactive explorer: a local web page that explains images")
    p.add_argument("--model", default=None,
                   help=f"a bcos_* name, hf-hub:ORG/REPO or local-dir:PATH (default: {DEFAULT_MODEL}, "
                        f"trained here, weights in the package)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--pretrained", action="store_true", help="load the model's pretrained weights")
    src.add_argument("--checkpoint", help="a .safetensors (or trusted .pth) state dict for the model")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--atlas", nargs="+", metavar="DIR",
                   help="atlas folders (python -m timm_bcos atlas ... --out DIR) to browse in the Atlas tab")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    p.set_defaults(func=app_main)
