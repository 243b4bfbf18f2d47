"""The documentation site, built as `make docs` builds it and served on 127.0.0.1, visited page by page in
Debian's chromium through Playwright. Every page must answer 200, raise no page error and log no console error,
request nothing outside 127.0.0.1, show every image, and every link inside the site must reach a page that
exists and, with an anchor, an element of that id. The search must find "completeness". Screenshots of the home
page and of an API page go to $DOCS_SCREENSHOTS (default outputs/docs_screenshots; the ones in reports/ are made
with that variable)."""
from __future__ import annotations

import functools
import http.server
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import pytest

from test_app_browser import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get("DOCS_SCREENSHOTS", ROOT / "outputs" / "docs_screenshots"))
ID = re.compile(r"""\bid=["']([^"']+)["']""")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


@pytest.fixture(scope="module")
def served(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        yield browser
        browser.close()


def _pages(site: Path) -> list[str]:
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html") if p.name != "404.html")
    assert "index.html" in pages and "reference/api/convert.html" in pages, pages[:10]
    return pages


@functools.lru_cache(maxsize=None)
def _ids(path: Path) -> frozenset:
    return frozenset(ID.findall(path.read_text(errors="replace")))


def _broken_link(site: Path, base: str, href: str) -> str | None:
    """Why an internal link is broken, or None. The target must be a file of the site (a folder: its
    index.html), and an anchor must be an id in it."""
    url, anchor = urldefrag(href)
    target = site / unquote(urlparse(url).path).lstrip("/")
    if target.is_dir():
        target = target / "index.html"
    if not target.is_file():
        return f"{href}: no such file in the site"
    if anchor and target.suffix == ".html" and unquote(anchor) not in _ids(target):
        return f"{href}: no element with id {anchor!r} in {target.relative_to(site)}"
    return None


def test_every_page_loads_cleanly_and_every_internal_link_resolves(site, served, browser):
    problems, outside = [], []
    page = browser.new_page()

    def only_local(route):
        if route.request.url.startswith((served, "data:", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    errors: list[str] = []
    page.route("**/*", only_local)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    pages = _pages(site)
    for name in pages:
        errors.clear()
        response = page.goto(f"{served}/{name}", wait_until="load")
        if response is None or response.status != 200:
            problems.append(f"{name}: status {response and response.status}")
        broken_images = page.evaluate("""() => Array.from(document.images)
            .filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'))""")
        problems += [f"{name}: image {src} not shown" for src in broken_images]
        for href in page.evaluate("() => Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"):
            if href.startswith(served):
                reason = _broken_link(site, name, href[len(served):])
                if reason:
                    problems.append(f"{name}: link {reason}")
        problems += [f"{name}: {e}" for e in errors]
    page.close()
    assert len(pages) >= 40, f"only {len(pages)} pages built"
    problems += [f"request outside 127.0.0.1: {url}" for url in sorted(set(outside))]
    assert not problems, "\n".join(problems[:40])


def test_search_finds_completeness_and_the_pages_look_right(served, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.route("**/*", lambda r: r.continue_() if r.request.url.startswith((served, "data:", "blob:"))
               else r.abort())
    page.goto(f"{served}/index.html", wait_until="load")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "docs_home.png"))
    page.wait_for_function("() => typeof window.document$ !== 'undefined'")  # Material's scripts have run
    field = page.locator("input.md-search__input")
    field.click()  # opens the search overlay (a "/" pressed before the scripts ran would be lost)
    field.press_sequentially("completeness", delay=30)  # key by key, as a user types (Material reads keyup)
    results = page.locator(".md-search-result__item")
    results.first.wait_for(state="attached", timeout=120_000)  # the index is built in a web worker: slow when busy
    titles = results.all_inner_texts()
    assert any("complete" in t.lower() for t in titles), titles[:5]
    page.goto(f"{served}/reference/api/convert.html", wait_until="load")
    assert page.locator("h2#timm_bcos.convert.convert, [id='timm_bcos.convert.convert']").count() >= 1
    page.screenshot(path=str(SHOTS / "docs_api.png"))
    page.close()
