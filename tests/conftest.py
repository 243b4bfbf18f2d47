import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(1)
# shard scans (timm_bcos.data.tarshards) kept in a folder of this run, not in the user's ~/.cache
os.environ.setdefault("TIMM_BCOS_CACHE", tempfile.mkdtemp(prefix="timm_bcos_test_cache_"))
# and the Arrow caches of data sets that scripts run in this process load (as _env gives subprocesses their own)
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="timm_bcos_test_hf_datasets_"))


def pytest_report_header(config):
    """What a failure on another machine needs to be read: versions and the CPU's kernel path."""
    import platform

    import accelerate
    import timm

    return [f"python {platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}, "
            f"accelerate {accelerate.__version__}",
            f"machine {platform.machine()}, {os.cpu_count()} cpus, torch cpu capability "
            f"{torch.backends.cpu.get_cpu_capability()}, torch threads per test process "
            f"{torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"]
