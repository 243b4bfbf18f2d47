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


# The files with the longest tests (end-to-end runs, several processes) first: pytest-xdist hands tests out in
# collection order, so a long test collected last leaves the other worker idle at the end. Each file's tests
# stay together and in order (module-scoped fixtures are built once per worker).
LONG_FILES_FIRST = ("test_train_faults.py", "test_kernels.py", "test_streaming.py", "test_app_load.py",
                    "test_guidance.py", "test_tarshards.py", "test_train.py", "test_align.py", "test_export.py",
                    "test_bcosified_releases.py", "test_app_browser.py", "test_atlas.py", "test_sync_norm.py",
                    "test_shipped.py", "test_docs_site.py", "test_docs.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES_FIRST)))  # stable
