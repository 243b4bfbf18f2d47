"""The README's main job.

Until a trained model ships (issue 7) this builds the paper's small CIFAR-10
style B-cos network from the layer library with random weights, runs a batch
and checks the dynamic-linear explanation against the logits.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from .layers import BcosConv2d, InputEncoding, LogitLayer, default_logit_bias, explanation_mode


def tiny_bcos_cnn(num_classes: int = 10, b: float = 2.0) -> nn.Module:
    chans = [6, 16, 32, 32, num_classes]
    strides = [1, 2, 2, 1]
    layers: list[nn.Module] = [InputEncoding(3)]
    for i, (cin, cout, s) in enumerate(zip(chans[:-1], chans[1:], strides)):
        k = 1 if i == len(strides) - 1 else 3
        layers.append(BcosConv2d(cin, cout, k, s, k // 2, b=b, max_out=2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), LogitLayer(default_logit_bias(num_classes))]
    return nn.Sequential(*layers)


def run_demo(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    model = tiny_bcos_cnn().double().eval()
    images = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    logits = model(images)
    encoded = model[0](images).requires_grad_(True)
    with explanation_mode(model):
        out = model[1:](encoded)
        picked = out.gather(1, out.argmax(1, keepdim=True)).sum()
        (weights,) = torch.autograd.grad(picked, encoded)
    contributions = (weights * encoded).sum(dim=(1, 2, 3))
    print(model)
    print("predicted class per image:", logits.argmax(1).tolist())
    bias = model[-1].logit_bias.item()
    for i in range(len(images)):
        top = logits[i].max().item()
        print(f"image {i}: logit - bias = {top - bias:+.6e}   sum of contributions = {contributions[i].item():+.6e}")
    return 0
