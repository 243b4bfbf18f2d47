"""The explorer under load, the short version of benchmarks/app_load.py (issue 26): `python -m timm_bcos app`
in a subprocess on 127.0.0.1, 8 gradio_client clients for 3 s after a 1 s warm-up, good and bad files mixed.

Every good answer must be the answer to its own request (texts equal, and each picture file, fetched
over HTTP, equal pixel for pixel to what the same callbacks give in this process for the same input);
every bad file refused with the app's message; no exception, broken file or server traceback; the
server's resident memory after the load within 10% of its value after the warm-up. The run ends by
itself (a deadline, 60 s per request at most) and stops only the server it started.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _app_load():
    pytest.importorskip("gradio_client", reason="the app extra is not installed")  # make test installs it
    spec = importlib.util.spec_from_file_location("benchmarks_app_load", REPO / "benchmarks" / "app_load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_explorer_under_load(tmp_path):
    load = _app_load()
    r = load.run(clients=8, seconds=3.0, warmup=1.0, workdir=tmp_path)
    print(load.report(r))
    assert r["server_errors"] == 0, r["problems"]
    assert r["mismatches"] == 0, r["problems"]
    assert r["warmup"]["server_errors"] == 0 and r["warmup"]["mismatches"] == 0, r["problems"]
    assert r["answered"] >= 10, r
    assert set(r["refused_kinds"]) == set(r["bad_kinds"]), r["refused_kinds"]  # each kind, each time
    assert r["queue_full"] == 0
    assert r["rss_ratio"] <= 1.10, r["rss_mb"]
    assert r["failed"] == []
