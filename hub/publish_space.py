"""Stage and upload the Hugging Face Space: hub/space/ plus the timm_bcos package beside its app.py.

Used by `python hub/publish.py --space [--dry-run]`; the staged folder (OUT_DIR/space) runs
locally too: `cd OUT_DIR/space && python app.py`.
"""
from __future__ import annotations

import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPACE = HERE / "space"
PACKAGE = HERE.parent / "timm_bcos"
SPACE_NAME = "timm-bcos-explorer"


def space_files() -> list[tuple[Path, str]]:
    """(source, path in the Space) for every file to upload; no caches or compiled files."""
    files = [(p, p.name) for p in sorted(SPACE.iterdir()) if p.is_file()]
    for p in sorted(PACKAGE.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"):
            files.append((p, str(Path("timm_bcos") / p.relative_to(PACKAGE))))
    return files


def stage(out_dir: Path) -> Path:
    """A fresh OUT_DIR/space holding exactly `space_files()`."""
    folder = out_dir / "space"
    if folder.exists():
        shutil.rmtree(folder)
    for src, rel in space_files():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, folder / rel)
    return folder


def publish_space(org: str, out_dir: Path, dry_run: bool, private: bool = False) -> int:
    folder = stage(out_dir)
    repo_id = f"{org}/{SPACE_NAME}"
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for p in files:
        print(f"  {p.relative_to(folder)} ({p.stat().st_size:,} bytes)")
    total = sum(p.stat().st_size for p in files)
    if dry_run:
        print(f"[dry-run] {len(files)} files, {total:,} bytes, staged in {folder} -> Space {repo_id}")
        return 0
    from huggingface_hub import create_repo, upload_folder

    create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    upload_folder(repo_id=repo_id, repo_type="space", folder_path=str(folder), commit_message="Update the explorer")
    print(f"published Space {repo_id} ({len(files)} files)")
    return 0
