"""The explorer under load (issue 26): concurrent gradio_client clients against the served app.

    .venv/bin/python benchmarks/app_load.py [--clients 32] [--seconds 60] [--warmup 20] [--json OUT]

Starts `python -m timm_bcos app --threads 1` (the shipped bcos_cifar10_w050_bnu, pretrained, offline)
on 127.0.0.1 at a free port in a subprocess, connects N clients (threads, one gradio_client session
each), runs them for --warmup seconds, reads the server's resident memory (VmRSS in
/proc/<pid>/status), runs them again for --seconds, then reads it again. Each client loops: upload a
good image (`/analyse`), then on the same session, half of the time, a class click (`/pick_class`)
or else, for 8 of the inputs, the PNG grid (`/grid`); every third upload is a bad file instead (not
an image, empty, truncated, a header claiming 11,000 x 11,000 pixels, a 1 x 1 image, a PDF, random
bytes, no file at all).

Checked, per answer: a good input's answer is its own. The 32 good inputs (8 samples x 4 variants:
as shipped, mirrored, turned and saved as JPEG, enlarged 2.5x; top-k 2..5, smoothing 0..2) all give
different pictures, and before the load the same callbacks compute every input's answer in this
process (same model, same torch thread count); each served answer's texts must equal them and its
picture files, fetched over HTTP like a browser does, must decode to the same pixels. A request that
got another request's file, or a file being rewritten, shows as a mismatch (or as a broken file, a
server error). A bad file must be refused with the app's message naming the problem. A server error
is an exception from the client (the app raised, a request went unanswered for 60 s), a file that
could not be fetched or decoded, or a traceback in the server's log.

Exits non-zero unless: no server errors, no mismatches, every bad kind refused (and none answered),
some good answers, and RSS after the run within --rss-tolerance (10%) of RSS after the warm-up.
tests/test_app_load.py runs the same for 8 clients and 10 s. Figures: benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "timm_bcos" / "samples"
REFUSED = "**Cannot use this input.** "
REQUEST_TIMEOUT_S = 60.0
SERVER_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
              "OMP_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------- inputs and their answers
@dataclass
class Good:
    path: Path
    topk: int
    smooth: int
    grid: bool = False  # also asked for its PNG grid (rendering one takes ~0.5 s: 8 inputs, not 32)
    answer: dict = field(default_factory=dict)  # what the callbacks give in this process


@dataclass
class Bad:
    kind: str
    path: Path | None  # None: no file at all
    expected: str      # part of the refusal message


def _png_header_only(w: int, h: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def make_inputs(folder: Path) -> tuple[list[Good], list[Bad]]:
    """32 good images that all give different answers, and one file of each bad kind."""
    folder.mkdir(parents=True, exist_ok=True)
    good = []
    for i, sample in enumerate(sorted(SAMPLES.glob("*.png"))):
        img = Image.open(sample).convert("RGB")
        stem = sample.stem
        variants = [(f"{stem}.png", img, "PNG"),
                    (f"{stem}_mirrored.png", img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG"),
                    (f"{stem}_turned.jpg", img.transpose(Image.Transpose.ROTATE_90), "JPEG"),
                    (f"{stem}_enlarged.png", img.resize((80, 80), Image.Resampling.BICUBIC), "PNG")]
        for j, (name, picture, fmt) in enumerate(variants):
            picture.save(folder / name, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
            n = 4 * i + j
            good.append(Good(folder / name, topk=2 + n % 4, smooth=n % 3, grid=j == 0))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noise.save(buf, format="PNG")
    tiny = io.BytesIO()
    Image.new("RGB", (1, 1), (255, 0, 0)).save(tiny, format="PNG")
    bad_files = [("text named .png", "notes.png", b"hello, this is not an image\n", "expected an image file"),
                 ("empty file", "empty.png", b"", "an empty file"),
                 ("truncated PNG", "cut.png", buf.getvalue()[: len(buf.getvalue()) // 2], "damaged or truncated"),
                 ("11000x11000 header", "huge.png", _png_header_only(11_000, 11_000), "image too large"),
                 ("1x1 image", "dot.png", tiny.getvalue(), "image too small"),
                 ("PDF", "paper.pdf", b"%PDF-1.4\n% not an image\n", "expected an image file"),
                 ("random bytes .jpg", "photo.jpg", np.random.default_rng(1).bytes(4096), "expected an image file")]
    bad = []
    for kind, name, data, expected in bad_files:
        (folder / name).write_bytes(data)
        bad.append(Bad(kind, folder / name, expected))
    bad.append(Bad("no file", None, "no image given"))
    return good, bad


def expected_answers(good: list[Good], threads: int = 1) -> None:
    """Each good input's answer from the app's callbacks in this process (the model as the server loads it)."""
    import torch

    from timm_bcos.app import DEFAULT_MODEL, Explorer, load_model
    from timm_bcos.app import callbacks as cb

    torch.set_num_threads(threads)  # as the server (--threads): the same arithmetic, the same pixels
    explorer = Explorer(load_model(DEFAULT_MODEL, pretrained=True), DEFAULT_MODEL)
    seen_pictures = set()
    for g in good:
        message, seen, scores, radio, expl, contrib, numbers, state = cb.analyse(
            explorer, {"path": str(g.path)}, g.topk, g.smooth, 99.5)
        assert seen is not None, (g.path, message)
        pick = cb.pick_class(explorer, 1, state, g.smooth, 99.5)
        g.answer = {"message": message, "seen": seen, "labels": list(scores), "confidences": list(scores.values()),
                    "choices": [name for name, _ in radio["choices"]], "explanation": expl,
                    "contributions": contrib, "numbers": numbers,
                    "pick": {"explanation": pick[0], "contributions": pick[1], "numbers": pick[2]},
                    "grid": _grid_pixels(cb, explorer, state, g.smooth) if g.grid else None}
        seen_pictures.add(hashlib.sha256(expl.tobytes()).hexdigest())
    # a swapped answer must be visible: no two inputs may give the same picture
    assert len(seen_pictures) == len(good), "two good inputs give the same explanation picture"


def _grid_pixels(cb, explorer, state: dict, smooth: int) -> np.ndarray:
    path = Path(cb.png_grid(explorer, state, smooth)["value"])
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    shutil.rmtree(path.parent, ignore_errors=True)
    return pixels


# ----------------------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, log: Path, threads: int = 1) -> subprocess.Popen:
    """`python -m timm_bcos app` on 127.0.0.1:port, output to `log`; wait with `wait_for_server`."""
    env = {**os.environ, **SERVER_ENV}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "timm_bcos", "app", "--host", "127.0.0.1", "--port",
                                 str(port), "--threads", str(threads)], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def wait_for_server(proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with {proc.returncode}:\n{log.read_text()}")
        if "Running on local URL" in log.read_text():
            return
        time.sleep(0.3)
    raise RuntimeError(f"the app did not start within {timeout:.0f} s:\n{log.read_text()}")


def stop_server(proc: subprocess.Popen) -> None:
    """End the server this script started (only that process)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (resident peak) of a process, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def tracebacks(log_text: str) -> list[str]:
    """The server log's tracebacks (their last lines)."""
    found = []
    for block in log_text.split("Traceback (most recent call last):")[1:]:
        lines = [line for line in block.splitlines() if line.strip() and not line.startswith(" ")]
        found.append(lines[0] if lines else block[:200])
    return found


# ----------------------------------------------------------------------------- the clients
@dataclass
class Tally:
    answered: int = 0      # good inputs answered with their own answer (analyse, pick_class, grid)
    refused: int = 0       # bad files refused with the app's message
    queue_full: int = 0    # refused by the queue's bound (also a message; none expected at 32 clients)
    server_errors: int = 0
    mismatches: int = 0
    refused_kinds: dict = field(default_factory=dict)
    latency: dict = field(default_factory=dict)  # endpoint -> seconds
    problems: list = field(default_factory=list)

    def problem(self, what: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(what)

    def merge(self, other: "Tally") -> None:
        for name in ("answered", "refused", "queue_full", "server_errors", "mismatches"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for k, v in other.refused_kinds.items():
            self.refused_kinds[k] = self.refused_kinds.get(k, 0) + v
        for k, v in other.latency.items():
            self.latency.setdefault(k, []).extend(v)
        for p in other.problems:
            self.problem(p)


class BrokenFile(Exception):
    pass


def _pixels(http, payload) -> np.ndarray:
    """The picture an answer refers to, fetched as the page fetches it."""
    if not isinstance(payload, dict) or not payload.get("url"):
        raise BrokenFile(f"no file in the answer: {payload!r:.200}")
    r = http.get(payload["url"])
    if r.status_code != 200:
        raise BrokenFile(f"HTTP {r.status_code} for {payload['url']}")
    try:
        with Image.open(io.BytesIO(r.content)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001  (a short or damaged file)
        raise BrokenFile(f"{type(e).__name__} decoding {payload['url']} ({len(r.content)} bytes)") from None


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a, b)


class Driver:
    """One client thread: its own gradio_client session and its own sequence of inputs."""

    def __init__(self, url: str, index: int, good: list[Good], bad: list[Bad]):
        import httpx
        from gradio_client import Client

        self.index, self.good, self.bad = index, good, bad
        self.client = Client(url, verbose=False, download_files=False)
        # a new connection per file: a kept-alive one idle for uvicorn's 5 s (answers wait ~4 s in the
        # queue at 32 clients) may be closed by the server just as a request goes out on it, which a
        # browser retries unseen; a real server failure (a short body, an error status) still shows
        self.http = httpx.Client(timeout=REQUEST_TIMEOUT_S, limits=httpx.Limits(max_keepalive_connections=0))
        self.rng = random.Random(index)
        self.n = 0

    def close(self) -> None:
        self.client.close()
        self.http.close()

    def _ask(self, tally: Tally, endpoint: str, *args):
        job = self.client.submit(*args, api_name=endpoint)
        t0 = time.perf_counter()
        out = job.result(timeout=REQUEST_TIMEOUT_S)
        tally.latency.setdefault(endpoint, []).append(time.perf_counter() - t0)
        return out

    def run(self, seconds: float) -> Tally:
        from gradio_client.utils import QueueError

        tally = Tally()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.n += 1
            try:
                if self.n % 3 == 0:  # every third upload a bad file, each client starting at another kind
                    self._bad(tally, self.bad[(self.index + self.n // 3) % len(self.bad)])
                else:
                    self._good(tally, self.rng.choice(self.good))
            except QueueError as e:
                tally.queue_full += 1
                tally.problem(f"queue: {e}")
            except BrokenFile as e:
                tally.server_errors += 1
                tally.problem(f"broken file: {e}")
            except Exception as e:  # noqa: BLE001  (the app raised, no answer in time, connection lost)
                tally.server_errors += 1
                frames = traceback.extract_tb(e.__traceback__)
                ours = [f"{f.name}:{f.lineno}" for f in frames if f.filename == __file__]
                inner = [f"{Path(f.filename).name}:{f.lineno}" for f in frames[-2:]]
                tally.problem(f"{type(e).__name__}: {str(e)[:300]} (in {' > '.join(ours + inner)})")
        return tally

    def _bad(self, tally: Tally, bad: Bad) -> None:
        from gradio_client import handle_file

        payload = handle_file(str(bad.path)) if bad.path else None
        message, seen, *_ = self._ask(tally, "/analyse", payload, 3, 0, 99.5)
        if isinstance(message, str) and message.startswith(REFUSED) and bad.expected in message and seen is None:
            tally.refused += 1
            tally.refused_kinds[bad.kind] = tally.refused_kinds.get(bad.kind, 0) + 1
        else:
            tally.mismatches += 1
            tally.problem(f"bad file {bad.kind!r} not refused as expected: {message!r:.200}")

    def _good(self, tally: Tally, g: Good) -> None:
        from gradio_client import handle_file

        want = g.answer
        out = self._ask(tally, "/analyse", handle_file(str(g.path)), g.topk, g.smooth, 99.5)
        message, seen, scores, radio, expl, contrib, numbers = out
        if not isinstance(radio, dict) or seen is None:  # a good image refused, or a malformed answer
            self._verdict(tally, g, "analyse", [f"no pictures: {message!r:.120}"])
            return
        problems = []
        if message != want["message"] or numbers != want["numbers"]:
            problems.append(f"texts {message!r:.80} / {numbers!r:.80}")
        labels = [c["label"] for c in (scores or {}).get("confidences", [])]
        if labels != want["labels"] or [name for name, _ in radio.get("choices", [])] != want["choices"]:
            problems.append(f"classes {labels}")
        for name, payload in (("seen", seen), ("explanation", expl), ("contributions", contrib)):
            if not _same(_pixels(self.http, payload), want[name]):
                problems.append(f"picture {name}")
        self._verdict(tally, g, "analyse", problems)
        if self.rng.random() < 0.5:  # a class click on the same session: re-rendered from its state
            expl, contrib, numbers = self._ask(tally, "/pick_class", 1, g.smooth, 99.5)
            pick = want["pick"]
            problems = [f"picture {name}" for name, payload in (("explanation", expl), ("contributions", contrib))
                        if not _same(_pixels(self.http, payload), pick[name])]
            if numbers != pick["numbers"]:
                problems.append(f"numbers {numbers!r:.80}")
            self._verdict(tally, g, "pick_class", problems)
        elif g.grid and self.rng.random() < 0.5:  # the PNG grid of the session's explanation (first class)
            update = self._ask(tally, "/grid", g.smooth)
            value = update.get("value") if isinstance(update, dict) else None
            ok = _same(_pixels(self.http, value), want["grid"])
            self._verdict(tally, g, "grid", [] if ok else ["grid picture"])

    @staticmethod
    def _verdict(tally: Tally, g: Good, endpoint: str, problems: list[str]) -> None:
        if problems:
            tally.mismatches += 1
            tally.problem(f"{endpoint} {g.path.name}: not its own answer ({', '.join(problems)})")
        else:
            tally.answered += 1


def run_clients(drivers: list[Driver], seconds: float) -> Tally:
    """All drivers at once for `seconds`; each thread ends by itself (deadline + at most one request timeout)."""
    results: list[Tally | None] = [None] * len(drivers)

    def work(i: int) -> None:
        results[i] = drivers[i].run(seconds)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(drivers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 3 * REQUEST_TIMEOUT_S)
    total = Tally()
    for i, r in enumerate(results):
        if r is None:
            total.server_errors += 1
            total.problem(f"client {i} did not finish")
        else:
            total.merge(r)
    return total


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    v = np.asarray(values) * 1000
    return {"n": len(values), "p50_ms": float(np.percentile(v, 50)), "p95_ms": float(np.percentile(v, 95)),
            "p99_ms": float(np.percentile(v, 99)), "max_ms": float(v.max())}


# ----------------------------------------------------------------------------- one whole run
def run(clients: int = 32, seconds: float = 60.0, warmup: float = 20.0, workdir: Path | None = None,
        threads: int = 1, rss_tolerance: float = 0.10) -> dict:
    """Server up, warm-up, load, server down; the figures and the verdict as a dict (see `main`)."""
    start = time.monotonic()

    def say(what: str) -> None:
        print(f"[{time.monotonic() - start:6.1f} s] {what}", file=sys.stderr, flush=True)

    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="app_load_")) if own else workdir
    log = workdir / "server.log"
    port = free_port()
    proc = start_server(port, log, threads)
    drivers: list[Driver] = []
    try:
        good, bad = make_inputs(workdir / "inputs")
        expected_answers(good, threads)  # while the server starts
        say(f"expected answers of {len(good)} inputs computed")
        wait_for_server(proc, log)
        url = f"http://127.0.0.1:{port}/"
        drivers = [Driver(url, i, good, bad) for i in range(clients)]
        say(f"server up, {clients} clients connected; warm-up")
        warm = run_clients(drivers, warmup)
        time.sleep(2.0)  # requests of the warm-up finish their files and logging
        rss_warm = memory_kb(proc.pid)["VmRSS"]
        say(f"warm-up done ({warm.answered} answered); RSS {rss_warm / 1024:.1f} MB; load for {seconds:.0f} s")
        peak, timeline = [rss_warm], [round(rss_warm / 1024, 1)]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.25):
                peak.append(memory_kb(proc.pid)["VmRSS"])
                if len(peak) % 20 == 1:  # every 5 s
                    timeline.append(round(peak[-1] / 1024, 1))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.monotonic()
        tally = run_clients(drivers, seconds)
        wall = time.monotonic() - t0
        time.sleep(2.0)
        done.set()
        sampler.join()
        mem = memory_kb(proc.pid)
        rss_after = mem["VmRSS"]
        say(f"load done; RSS {rss_after / 1024:.1f} MB")
    finally:
        closing = [threading.Thread(target=d.close, daemon=True) for d in drivers]  # ~1 s each: at once
        for t in closing:
            t.start()
        for t in closing:
            t.join(10)
        stop_server(proc)
    say("server stopped")
    log_text = log.read_text()
    errors_in_log = tracebacks(log_text)
    requests = tally.answered + tally.refused + tally.queue_full + tally.server_errors + tally.mismatches
    result = {
        "clients": clients, "seconds": seconds, "warmup_s": warmup, "wall_s": round(wall, 1),
        "server_threads": threads, "cpus": os.cpu_count(),
        "requests": requests, "answered": tally.answered, "refused": tally.refused, "queue_full": tally.queue_full,
        "server_errors": tally.server_errors + len(errors_in_log), "mismatches": tally.mismatches,
        "refused_kinds": tally.refused_kinds, "bad_kinds": [b.kind for b in bad],
        "requests_per_s": round(requests / wall, 2),
        "latency": {k: percentiles(v) for k, v in sorted(tally.latency.items())},
        "latency_all": percentiles([x for v in tally.latency.values() for x in v]),
        "warmup": {"answered": warm.answered, "refused": warm.refused, "server_errors": warm.server_errors,
                   "mismatches": warm.mismatches},
        "rss_mb": {"after_warmup": round(rss_warm / 1024, 1), "peak": round(max(peak) / 1024, 1),
                   "after": round(rss_after / 1024, 1), "process_peak_hwm": round(mem["VmHWM"] / 1024, 1)},
        "rss_ratio": round(rss_after / rss_warm, 4), "rss_every_5s_mb": timeline,
        "problems": tally.problems + warm.problems + [f"server log: {e}" for e in errors_in_log[:10]],
    }
    failed = []
    if result["server_errors"] or warm.server_errors:
        failed.append("server errors")
    if result["mismatches"] or warm.mismatches:
        failed.append("mismatched answers")
    if tally.answered == 0:
        failed.append("no good answers")
    if set(tally.refused_kinds) != {b.kind for b in bad}:
        failed.append(f"bad kinds never refused: {sorted({b.kind for b in bad} - set(tally.refused_kinds))}")
    if result["rss_ratio"] > 1 + rss_tolerance:
        failed.append(f"RSS grew by {100 * (result['rss_ratio'] - 1):.1f}% (> {100 * rss_tolerance:.0f}%)")
    result["failed"] = failed
    if own:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def report(r: dict) -> str:
    lat = r["latency_all"]
    lines = [f"{r['clients']} clients for {r['seconds']:.0f} s (after {r['warmup_s']:.0f} s warm-up), "
             f"server on {r['server_threads']} torch thread(s), {r['cpus']} CPUs",
             f"  requests {r['requests']} ({r['requests_per_s']}/s): answered {r['answered']}, "
             f"refused {r['refused']}, queue full {r['queue_full']}, server errors {r['server_errors']}, "
             f"mismatches {r['mismatches']}",
             f"  refused by kind: {r['refused_kinds']}",
             f"  latency, all requests: p50 {lat.get('p50_ms', 0):.0f} ms, p95 {lat.get('p95_ms', 0):.0f} ms, "
             f"p99 {lat.get('p99_ms', 0):.0f} ms, max {lat.get('max_ms', 0):.0f} ms"]
    for name, p in r["latency"].items():
        lines.append(f"    {name:<12} n={p['n']:<5} p50 {p['p50_ms']:.0f} ms, p95 {p['p95_ms']:.0f} ms")
    m = r["rss_mb"]
    lines.append(f"  server RSS: after warm-up {m['after_warmup']} MB, peak {m['peak']} MB, after {m['after']} MB "
                 f"(ratio {r['rss_ratio']:.3f}; process high-water mark {m['process_peak_hwm']} MB)")
    for p in r["problems"][:10]:
        lines.append(f"  problem: {p}")
    lines.append("PASS" if not r["failed"] else f"FAIL: {'; '.join(r['failed'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of the same load before RSS is read")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads (--threads of the app)")
    parser.add_argument("--rss-tolerance", type=float, default=0.10)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    r = run(args.clients, args.seconds, args.warmup, threads=args.threads, rss_tolerance=args.rss_tolerance)
    print(report(r))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(r, indent=1) + "\n")
    return 1 if r["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
