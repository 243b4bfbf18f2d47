"""Convert every released B-cos v2 checkpoint and publish it to the Hugging Face Hub.

    python hub/publish.py --weights-dir DIR --org ORG [--dry-run --out-dir out/hub] [--only resnet50 ...]
    python hub/publish.py --space --org ORG [--dry-run]   # the explorer Space (hub/space/ + the package)

DIR holds the release .pth files (names as on the B-cos-v2 release v0.0.1-weights;
download them first, e.g. `python hub/publish.py --print-urls | xargs -n1 wget`).
Each becomes a repo ORG/<model>.<tag> (model.safetensors, config.json, README.md).
--dry-run writes the folders under --out-dir and uploads nothing. After publishing,
call timm_bcos.weights.set_hub_org("ORG") (or set TIMM_BCOS_HUB_ORG) so pretrained=True uses them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from convert_bcos_v2 import convert_file  # noqa: E402

from timm_bcos.hub import push_to_hub  # noqa: E402
from timm_bcos.weights import RELEASES  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path)
    parser.add_argument("--org", default="ORG")
    parser.add_argument("--out-dir", type=Path, default=Path("out/hub"))
    parser.add_argument("--dry-run", action="store_true", help="write the folders, upload nothing")
    parser.add_argument("--only", nargs="*", help="bcos entrypoint names to publish (default: all)")
    parser.add_argument("--print-urls", action="store_true")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--space", action="store_true", help="publish the explorer Space ORG/timm-bcos-explorer")
    args = parser.parse_args(argv)
    if args.space:
        from publish_space import publish_space

        return publish_space(args.org, args.out_dir, args.dry_run, args.private)
    releases = [r for r in RELEASES if not args.only or r.bcos_name in args.only]
    if args.print_urls:
        print("\n".join(r.url for r in releases))
        return 0
    if args.weights_dir is None:
        parser.error("--weights-dir is required")
    missing = [r.file for r in releases if not (args.weights_dir / r.file).is_file()]
    if missing:
        raise SystemExit(f"error: missing release files in {args.weights_dir}: {', '.join(missing)}")
    for r in releases:
        repo_id = f"{args.org}/{r.hub_repo}"
        folder = convert_file(args.weights_dir / r.file, r.bcos_name, args.out_dir / r.hub_repo, repo_id)
        if args.dry_run:
            print(f"[dry-run] {folder} -> {repo_id}")
        else:
            push_to_hub(folder, repo_id, private=args.private)
            print(f"published {repo_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
