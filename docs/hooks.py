"""mkdocs hook: the repository's reports/ and benchmarks/RESULTS.md become pages of the site, so the
Results page links to them as they are in the repository (one copy, no drift)."""
from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
SHARED = ["reports", "benchmarks/RESULTS.md"]


def on_files(files, config):
    for entry in SHARED:
        path = ROOT / entry
        for source in ([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())):
            uri = source.relative_to(ROOT).as_posix()
            if files.get_file_from_path(uri) is None:
                files.append(File.generated(config, uri, abs_src_path=str(source)))
    return files
