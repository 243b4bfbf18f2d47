"""Importing this package registers every bcos_* entrypoint with timm."""
from . import (
    _fx, bcos_cifar, bcos_converted, bcos_convnext, bcos_densenet, bcos_inception, bcos_resnet, bcos_vgg, bcos_vit,
)

__all__ = ["bcos_cifar", "bcos_converted", "bcos_convnext", "bcos_densenet", "bcos_inception", "bcos_resnet",
           "bcos_vgg", "bcos_vit"]
