"""mkdocs hook: the benchmark pictures in ``bench/results`` become part of the site, under the same path.

The pages link them as ``bench/results/<name>.png`` (relative to ``docs/``), so the site shows the very files the
benchmarks wrote: nothing is copied into ``docs/`` by hand, and a picture cannot drift from its results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]


def on_files(files: Files, config: Any) -> Files:
    """Add every ``bench/results/*.png`` to the site's files, at ``bench/results/<name>.png``."""
    for picture in sorted((ROOT / "bench" / "results").glob("*.png")):
        files.append(
            File(
                f"bench/results/{picture.name}",
                src_dir=str(ROOT),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files
