"""The fused Triton kernels (timm_bcos.layers.kernels): exactness and dispatch.

The kernels run on the CPU under Triton's interpreter in one subprocess
(tests/kernels_interpreted.py, TRITON_INTERPRET=1 kept out of this process);
each of its checks is one test here. The fallbacks (no triton, the
TIMM_BCOS_KERNELS=0 switch, CPU tensors) run in small subprocesses too, since
they depend on what is imported at start-up.
"""
import contextlib
import copy
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from timm_bcos.layers import kernels

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKS = [
    "check_patch_norm_forward_backward",
    "check_patch_norm_gradcheck",
    "check_bcos_scale_forward_backward",
    "check_bcos_scale_gradcheck",
    "check_b2_backward_keeps_the_output_not_the_conv_output",
    "check_fused_conv_layer_matches_separate_ops",
    "check_batch_norm_forward_backward",
    "check_batch_norm_statistics_split_and_offset",
    "check_batch_norm_running_var_updated_by_the_kernel",
    "check_batch_norm_gradcheck",
    "check_bfloat16_and_mixed_dtypes",
    "check_layers_train_and_explain",
    "check_compiled_graph_sees_the_ops",
    "check_jit_trace_records_the_ops",
    "check_opcheck",
    "check_eager_takes_the_plain_functions",
]
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def _run(code_or_file, env_extra, timeout=600):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, os.path.dirname(HERE)]), **env_extra}
    for var in ("TRITON_INTERPRET", "TIMM_BCOS_KERNELS"):  # only what this test sets
        if var not in env_extra:
            env.pop(var, None)
    args = [code_or_file] if code_or_file.endswith(".py") else ["-c", code_or_file]
    proc = subprocess.run([sys.executable, *args], env=env, cwd=HERE, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


@needs_triton
def test_fused_kernels_under_interpreter():
    """Every check of kernels_interpreted.py, in one subprocess (one test: pytest-xdist would start it once per worker)."""
    out = _run(os.path.join(HERE, "kernels_interpreted.py"), {"TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"})
    results = json.loads(out.strip().splitlines()[-1])
    assert sorted(results) == sorted(CHECKS), f"checks run {sorted(results)} vs listed {sorted(CHECKS)}"
    failed = {k: v for k, v in results.items() if v != "ok"}
    assert not failed, "\n\n".join(f"{k}:\n{v}" for k, v in failed.items())


@needs_triton
def test_kernels_use_the_layers_stabilisers():
    from timm_bcos.layers.functional import COS_EPS
    from timm_bcos.layers.kernels._bcos_scale import COS_EPS as KERNEL_COS_EPS

    assert KERNEL_COS_EPS == COS_EPS  # kept apart to avoid an import circle (functional -> kernels)


def test_cpu_tensors_take_the_pytorch_path():
    if kernels.INTERPRET:
        pytest.skip("this process runs under Triton's interpreter")
    assert not kernels.use_fused(torch.zeros(2, 3))


_LAYER_STEP = """
import sys, torch
from torch import nn
from timm_bcos import layers as L
from timm_bcos.layers import kernels
net = nn.Sequential(L.BcosConv2d(6, 4, 3, padding=1, encode_input=True), L.BatchNormUncentered2d(4),
                    nn.Flatten(1), L.BcosLinear(4 * 25, 3, b=1.5))
x = torch.rand(2, 3, 5, 5, requires_grad=True)
net(x).sum().backward()
assert torch.isfinite(x.grad).all()
print(kernels.ENABLED, kernels.use_fused(x), "timm_bcos.layers.kernels._ops" in sys.modules)
"""


@pytest.mark.parametrize("case,env,prelude", [
    ("triton missing", {"TRITON_INTERPRET": "1"}, "import sys; sys.modules['triton'] = None\n"),
    ("switched off", {"TRITON_INTERPRET": "1", "TIMM_BCOS_KERNELS": "0"}, ""),
])
def test_fallback_to_the_pytorch_path(case, env, prelude):
    """Without triton, or with TIMM_BCOS_KERNELS=0, the layers run their PyTorch code and never load the kernels."""
    out = _run(prelude + _LAYER_STEP, env, timeout=300)
    assert out.split() == ["False", "False", "False"], f"{case}: {out}"


_FLOAT_ARGS = {"eps", "b_minus_1", "cos_eps", "momentum"}
_OUTPUTS = ("_out", "_ptr")  # pointer arguments end in one of these


def _gpu_compile_cases():
    import triton.language as tl

    from timm_bcos.layers.kernels import _batch_norm as B, _bcos_conv as C, _bcos_scale as S, _patch_norm as P

    acc = dict(ACC=tl.float32)
    return [
        (P._channel_sumsq_kernel, dict(FINAL=False, BLOCK_K=8, BLOCK_S=256, **acc)),
        (P._window_sum_sqrt_kernel, dict(KH=3, KW=3, BLOCK=1024)),
        (P._patch_norm_bwd_kernel, dict(KH=3, KW=3, ACCUMULATE=True, BLOCK_K=8, BLOCK_S=256, **acc)),
        (S._scale_fwd_kernel, dict(IS_B2=False, BLOCK_K=8, BLOCK_S=256, **acc)),
        (C._window_scale_fwd_kernel, dict(IS_B2=True, BLOCK_K=8, BLOCK_S=256, KH=3, KW=3, **acc)),
        (S._scale_bwd_kernel, dict(IS_B2=True, DETACH=False, FROM_OUT=True, BLOCK_K=8, BLOCK_S=256, **acc)),
        (S._scale_bwd_kernel, dict(IS_B2=False, DETACH=False, FROM_OUT=False, BLOCK_K=8, BLOCK_S=256, **acc)),
        (S._scale_bwd_kernel, dict(IS_B2=False, DETACH=True, FROM_OUT=False, BLOCK_K=8, BLOCK_S=256, **acc)),
        (B._stats_partial_kernel, dict(BLOCK=1024, **acc)),
        (B._apply_kernel, dict(HAS_W=True, HAS_RV=True, LERP_LOW=True, BLOCK=1024, BLOCK_SPLITS=32)),
        (B._gx_partial_kernel, dict(BLOCK=1024, **acc)),
        (B._bwd_apply_kernel, dict(DETACH=False, BLOCK=1024, BLOCK_SPLITS=64)),
    ]


@needs_triton
def test_kernels_compile_for_a_gpu_without_one():
    """Every kernel through Triton's real compiler to an sm_90 binary (the interpreter accepts more than it does)."""
    if kernels.INTERPRET:
        pytest.skip("this process runs under Triton's interpreter")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    for fn, constexprs in _gpu_compile_cases():
        sig = {}
        for name in fn.arg_names:
            if name in constexprs:
                sig[name] = "constexpr"
            elif name.endswith(_OUTPUTS):
                sig[name] = "*bf16" if name in ("x_ptr", "lin_ptr", "g_ptr") else "*fp32"  # autocast's mix
            else:
                sig[name] = "fp32" if name in _FLOAT_ARGS else "i32"
        compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs),
                                  target=GPUTarget("cuda", 90, 32))
        assert ".entry" in compiled.asm["ptx"], fn.__name__


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("triton") is None,
                                reason="needs a CUDA device and triton")


def fused_matches_pytorch_path(device, dtype, tol):
    """A small network, training and explanation mode, and one ResNet-sized block (many programs, K splits)."""
    from kernels_interpreted import _small_net, assert_close, grads, pytorch_path
    from timm_bcos import layers as L
    from timm_bcos.layers import explanation_mode

    def block():
        return torch.nn.Sequential(L.BcosConv2d(256, 512, 1, stride=2), L.BatchNormUncentered2d(512),
                                   L.BcosConv2d(512, 512, 3, padding=1))

    torch.manual_seed(0)
    for make, x in [(_small_net, torch.rand(2, 3, 8, 8)), (block, torch.randn(16, 256, 14, 14))]:
        for explain in (False, True):
            results = []
            for fused in (True, False):
                torch.manual_seed(1)
                net = make().to(device, dtype)
                with contextlib.ExitStack() as stack:
                    if not fused:
                        stack.enter_context(pytorch_path())
                    if explain:
                        stack.enter_context(explanation_mode(net))
                    results.append(grads(net, [x.to(device, dtype).requires_grad_()]))
            assert_close(*results, tol=tol, what=f"{make.__name__} explain={explain}")


def fused_under_autocast_and_compile(device):
    """bf16 autocast: the fused path is about as accurate as the PyTorch path (both against float64); inductor."""
    from helpers import rel_err
    from kernels_interpreted import _small_net, assert_close, grads, pytorch_path

    net = _small_net().to(device).float()
    x = torch.rand(4, 3, 8, 8, device=device).requires_grad_()
    with torch.autocast(device, dtype=torch.bfloat16):
        fused = grads(net, [x])
        with pytorch_path():
            plain = grads(net, [x])
    with pytorch_path():
        exact = grads(copy.deepcopy(net).double(), [x.double()])
    # the input gradient through train-mode batch statistics cancels heavily: in bf16 both paths
    # are far from float64 there, so the bar is "no worse than the PyTorch path"
    for what, f, p, e in zip(("output", "input gradient"), fused, plain, exact):
        assert rel_err(f, e) <= 2 * rel_err(p, e) + 1e-2, f"{what}: fused {rel_err(f, e):.3g} vs plain {rel_err(p, e):.3g}"
    compiled = grads(torch.compile(net), [x])
    assert_close(compiled, grads(net, [x]), tol=1e-5, what="inductor vs eager, fused")


@needs_cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_fused_kernels_on_cuda_match_the_pytorch_path(dtype, tol):
    # TF32 convolutions (cuDNN's default) would round both paths' conv inputs to 10 bits and turn
    # float32 rounding differences of the kernels into ~1e-5 (seen on an H100): compare in full float32
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        fused_matches_pytorch_path("cuda", dtype, tol)


@needs_cuda
def test_fused_kernels_on_cuda_under_bf16_autocast_and_compile():
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        fused_under_autocast_and_compile("cuda")


@needs_cuda
def test_compiled_pytorch_path_on_cuda_matches_eager():
    """The layers' PyTorch code under inductor on CUDA (what TIMM_BCOS_KERNELS=0 or a missing triton compiles).

    On an H100 (torch 2.11, 2026-11-26) this graph, then built from the layers' hand-written
    autograd.Functions, gave an input gradient with relative error 1.0 against eager (the forward
    matched); the CPU's inductor (torch 2.14) was right. Likely pytorch#184113 (dynamo and such
    Functions, torch 2.11). Compiled graphs now take plain ops instead (tests/test_compile.py);
    until this passes on a GPU, compiled graphs keep the fused kernels as custom ops.
    """
    from kernels_interpreted import _small_net, assert_close, grads, pytorch_path

    net = _small_net().cuda().float()
    x = torch.rand(4, 3, 8, 8, device="cuda")
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False), pytorch_path():
        eager = grads(net, [x.clone().requires_grad_()])
        compiled = grads(torch.compile(net), [x.clone().requires_grad_()])
    assert_close(compiled, eager, tol=1e-5, what="inductor vs eager, PyTorch path")
