"""The figures of reports/atlas.md, from the full atlases of train_scripts/atlas_cifar10.sh:
reports/atlas_neurons.png (selected neurons, one strip each), and screenshots in Debian's chromium of
a static page (reports/atlas_page.png) and of the explorer's Atlas tab (reports/atlas_tab.png).

    python train_scripts/atlas_report_figures.py ATLASES   (ATLASES: the OUT of atlas_cifar10.sh)
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

REPORTS = Path(__file__).resolve().parents[1] / "reports"
SCRATCH, BCOSIFIED = "bcos_cifar10_w050_bnu_cpu30e_cifar10", "bcos_cifar10_w050_bcosified_bcosify_cpu10e_cifar10"
SHOWN = [(SCRATCH, "4_0", 26), (SCRATCH, "4_0", 18), (BCOSIFIED, "4_0", 32), (SCRATCH, "4_0", 22),
         (SCRATCH, "7_0", 82), (SCRATCH, "7_0", 42), (SCRATCH, "7_0", 29), (BCOSIFIED, "7_0", 54),
         (BCOSIFIED, "7_0", 45), (SCRATCH, "7_0", 86)]


def neuron_figure(atlases: Path, path: Path) -> None:
    parts = []
    for model, layer, channel in SHOWN:
        folder = atlases / f"{model}_features_{layer}"
        index = json.loads((folder / "index.json").read_text())
        n = next(n for n in index["neurons"] if n["channel"] == channel)
        title = (f"{'from scratch' if model == SCRATCH else 'B-cosified'}, {index['layer']} channel {channel}: "
                 f"{100 * n['specificity']:.0f}% {n['top_class_name']} among its {n['mix_of']} most activating images")
        strip = Image.open(folder / n["strip"]).convert("RGB")
        parts.append((title, strip.resize((strip.width * 2 // 3, strip.height * 2 // 3), Image.NEAREST)))
    fig = Image.new("RGB", (max(s.width for _, s in parts) + 20, sum(s.height + 30 for _, s in parts) + 10), "white")
    draw, y = ImageDraw.Draw(fig), 5
    for title, strip in parts:
        draw.text((10, y), title, fill="black")
        fig.paste(strip, (10, y + 16))
        y += strip.height + 30
    fig.save(path, optimize=True)


def screenshots(page_atlas: Path, tab_atlas: Path) -> None:
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    log = REPORTS.parent / "outputs" / "atlas_app.log"
    log.parent.mkdir(exist_ok=True)
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "timm_bcos", "app", "--port", str(port), "--atlas",
                                   str(tab_atlas)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"])
            page = browser.new_page(viewport={"width": 1100, "height": 1500})
            page.goto((page_atlas / "index.html").as_uri())
            page.screenshot(path=str(REPORTS / "atlas_page.png"))
            deadline = time.monotonic() + 180
            while "Running on local URL" not in log.read_text():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the explorer did not start:\n{log.read_text()}")
                time.sleep(0.5)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_role("tab", name="Atlas").click()
            page.wait_for_function("(() => { const i = [...document.querySelectorAll('#atlas-gallery img')]; "
                                   "return i.length > 0 && i.every(e => e.complete && e.naturalWidth > 0); })()")
            page.screenshot(path=str(REPORTS / "atlas_tab.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()


if __name__ == "__main__":
    atlases = Path(sys.argv[1]).resolve()
    neuron_figure(atlases, REPORTS / "atlas_neurons.png")
    screenshots(atlases / f"{SCRATCH}_features_4_0", atlases / f"{SCRATCH}_features_7_0")
