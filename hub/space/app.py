"""The timm_bcos Space: the interactive explorer, by default on the CIFAR-10 B-cos model trained in timm_bcos.

Runs the same app as `python -m timm_bcos app`; `hub/publish.py --space` uploads this folder with
the timm_bcos package (weights and sample images inside) beside it. TIMM_BCOS_MODEL picks another
bcos_* model (with its pretrained weights) or an hf-hub:ORG/REPO.
"""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from timm_bcos.app import DEFAULT_MODEL, Explorer, load_model  # noqa: E402
from timm_bcos.app.layout import launch  # noqa: E402

if __name__ == "__main__":
    name = os.environ.get("TIMM_BCOS_MODEL", DEFAULT_MODEL)
    # a Space sets GRADIO_SERVER_NAME=0.0.0.0 for its proxy; anywhere else the app stays local
    launch(Explorer(load_model(name, pretrained=True), name),
           host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
           port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
