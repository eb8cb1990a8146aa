"""mkdocs hooks: the site's home page is the README, and the benchmark pictures are the files the benchmarks wrote.

* ``index.md`` is generated from ``README.md`` (its ``docs/`` links made relative to the site), so the two cannot
  drift apart;
* every ``bench/results/*.png`` becomes part of the site under the same path; the pages link them as
  ``bench/results/<name>.png`` (relative to ``docs/``): nothing is copied into ``docs/`` by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]


REPOSITORY = "https://github.com/lightning-compress/lightning_compress/blob/main/"


def home_page() -> str:
    """The README with its links rewritten for the site (``docs/x.md`` -> ``x.md``, repository files -> GitHub)."""
    text = (ROOT / "README.md").read_text()
    return text.replace("](docs/", "](").replace("](CONTRIBUTING.md)", f"]({REPOSITORY}CONTRIBUTING.md)")


def on_files(files: Files, config: Any) -> Files:
    """Add the home page and every ``bench/results/*.png`` (at ``bench/results/<name>.png``) to the site's files."""
    files.append(File.generated(config, "index.md", content=home_page()))
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
