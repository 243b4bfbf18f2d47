"""Latency of the explorer on the shipped CIFAR-10 model (bcos_cifar10_w050_bnu): the bar is < 1 s.

    .venv/bin/python benchmarks/app.py [--repeats 15] [--topk 5] [--threads N]

Times, as medians: the model's top-k explanation (one forward, k backward passes); the whole
upload callback (read the file, transform by the data config, explain, render pictures and
numbers); a class click (re-render from the cache); and a round trip through the served app
with gradio_client (upload, queue, callback, result files); then 8 concurrent clients.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from _timing import time_interleaved  # noqa: E402

from timm_bcos.app import DEFAULT_MODEL, Explorer, load_image, load_model  # noqa: E402
from timm_bcos.cli.demo import SAMPLES  # noqa: E402


def served_round_trips(explorer: Explorer, path: Path, topk: int, repeats: int) -> tuple[float, float]:
    """Median seconds of one client request, and wall seconds of 8 concurrent ones."""
    from gradio_client import Client, handle_file

    from timm_bcos.app.layout import build_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app(explorer).queue(default_concurrency_limit=1)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
        ask = lambda p: client.predict(handle_file(str(p)), topk, 0, 99.5, api_name="/analyse")  # noqa: E731
        ask(path)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            ask(path)
            times.append(time.perf_counter() - t0)
        samples = sorted(SAMPLES.glob("*.png"))
        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(ask, samples))
        return statistics.median(times), time.perf_counter() - t0
    finally:
        app.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from timm_bcos.app import callbacks as cb

    explorer = Explorer(load_model(DEFAULT_MODEL, pretrained=True), DEFAULT_MODEL)
    path = SAMPLES / "cifar10_test_0000_cat.png"
    x = explorer.prepare(load_image(path)).x
    state = cb.analyse(explorer, {"path": str(path)}, args.topk, 0, 99.5)[-1]
    med = time_interleaved({
        "explain": lambda: explorer.explain_topk(x, args.topk),
        "upload callback": lambda: cb.analyse(explorer, {"path": str(path)}, args.topk, 0, 99.5),
        "class click": lambda: cb.pick_class(explorer, 1, state, 0, 99.5),
    }, repeats=args.repeats)
    served, concurrent = served_round_trips(explorer, path, args.topk, args.repeats)
    print(f"{DEFAULT_MODEL}, top-{args.topk}, torch threads {torch.get_num_threads()}, medians of {args.repeats}")
    for name, sec in med.items():
        print(f"  {name:<16} {sec * 1000:8.1f} ms")
    print(f"  {'served request':<16} {served * 1000:8.1f} ms  (gradio_client round trip)")
    print(f"  8 concurrent requests answered in {concurrent:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
