"""Helpers shared by the kernel modules: tile sizes and the accumulation dtype."""
from __future__ import annotations

import functools

import torch
import triton.language as tl

# Elements per program tile: big enough to keep a GPU's memory system busy,
# small enough for the interpreter (TRITON_INTERPRET=1) to stay quick.
TILE = 2048


# Host-side integer helpers in plain Python: triton.cdiv / next_power_of_2 are jit functions whose
# host call costs ~10 us each, which made the launch geometry most of a small layer's CPU time.
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def pow2(n: int) -> int:
    """The smallest power of two >= max(n, 1)."""
    return 1 << (max(int(n), 1) - 1).bit_length()


def tile_2d(rows: int, cols: int) -> tuple[int, int]:
    """(BLOCK_ROWS, BLOCK_COLS) powers of two for a [rows, cols] tile, cols (contiguous) first."""
    block_cols = min(pow2(cols), 256)
    block_rows = max(1, min(pow2(rows), TILE // block_cols))
    return block_rows, block_cols


# Programs to aim for: a few waves on a large GPU (an H100 has 132 SMs).
TARGET_PROGRAMS = 1024


def k_split(programs: int, k: int, block_k: int) -> tuple[int, int]:
    """(splits, channels per split) so that `programs` x splits fills the GPU; channels per split a multiple of block_k."""
    blocks = cdiv(k, block_k)
    splits = max(1, min(blocks, TARGET_PROGRAMS // max(programs, 1)))
    per = cdiv(blocks, splits) * block_k
    return cdiv(k, per), per


@functools.lru_cache(maxsize=1024)
def grouped_geometry(n: int, c: int, s: int, groups: int):
    """Launch geometry over [N, groups * K, S] where each program owns one (n, g), a block of S and a
    split of the K channels: (grid, K, channels per program, BLOCK_K, BLOCK_S). Cached, since a
    model repeats its shapes every step."""
    bk, bs = tile_2d(c // groups, s)
    splits, per = k_split(n * groups * cdiv(s, bs), c // groups, bk)
    return (n * groups, cdiv(s, bs), splits), c // groups, per, bk, bs


def capturing_graph() -> bool:
    """Inside torch.compile or torch.jit.trace: the kernels go in as custom ops, which those see
    (an autograd.Function's direct Triton launch would be traced as Python)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def on_input_device(op):
    """Run `op` with its first argument's CUDA device current: Triton launches on the current device."""
    @functools.wraps(op)
    def wrapper(t: torch.Tensor, *args):
        if t.is_cuda and t.device.index != torch.cuda.current_device():  # e.g. a model on cuda:1
            with torch.cuda.device(t.device):
                return op(t, *args)
        return op(t, *args)
    return wrapper


def acc_dtype(t: torch.Tensor):
    """Accumulate in float64 for float64 tensors (the tests' oracle checks), else float32."""
    return tl.float64 if t.dtype == torch.float64 else tl.float32


def acc_torch_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32
