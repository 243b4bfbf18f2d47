"""Training-step throughput of the CIFAR-10 networks (batch 128, 32x32), against the
conventional conv+BN+ReLU network of the same shape, in one process.

    .venv/bin/python benchmarks/cifar_train_step.py
"""
import time

import timm
import torch

import timm_bcos  # noqa: F401

CONFIGS = [
    ("cifar_convnet", dict(width=0.5)),
    ("bcos_cifar10", dict(width=0.5, norm=True, max_out=1)),
    ("bcos_cifar10", dict(width=0.5)),  # the paper's plain MaxOut network
]


def images_per_second(name, kwargs, batch=128, steps=5):
    model = timm.create_model(name, **kwargs).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - start)


if __name__ == "__main__":
    torch.set_num_threads(2)
    base = None
    for name, kwargs in CONFIGS:
        ips = images_per_second(name, kwargs)
        base = base or ips
        print(f"| {name} {kwargs} | {ips:.0f} img/s | {ips / base:.2f}x conventional |", flush=True)
