"""mkdocs hooks: the site's home page is the README, and the benchmark pictures are the files the benchmarks wrote.

* ``index.md`` is generated from ``README.md`` (its ``docs/`` links made relative to the site), so the two cannot
  drift apart;
* every ``bench/results/*.png`` becomes part of the site under the same path; the pages link them as
  ``bench/results/<name>.png`` (relative to ``docs/``): nothing is copied into ``docs/`` by hand;
* a figure ``<!-- fig FILE | ROW | COLUMN -->...<!-- /fig -->`` in the README or a page is read from its results
  file (:mod:`bench.figures`; a test keeps the committed text equal to it);
* a line ``<!-- bench-table: NAME -->`` in a page becomes the table of ``bench/results/NAME.json`` (its ``table``
  rows, with the date and machine it was measured on), and the Benchmarks page ends with every results table: the
  figures on the site are read from the results files at build time, so they cannot drift from them.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench.figures, when mkdocs runs from elsewhere
from bench.figures import render  # noqa: E402

REPOSITORY = "https://github.com/lightning-compress/lightning_compress/blob/main/"


def home_page() -> str:
    """The README with its links rewritten for the site (``docs/x.md`` -> ``x.md``, repository files -> GitHub)."""
    text = render((ROOT / "README.md").read_text())
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


_MARKER = re.compile(r"^<!-- bench-table: ([A-Za-z0-9_]+) -->$", re.MULTILINE)


def bench_table(name: str) -> str:
    """The Markdown table of ``bench/results/<name>.json`` and where it was measured.

    Raises:
        FileNotFoundError: no such results file (the strict build fails on a marker that names none).
    """
    payload = json.loads((ROOT / "bench" / "results" / f"{name}.json").read_text())
    rows = payload["table"]
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    env = payload.get("environment", {})
    lines += [
        "",
        f"*`bench/results/{name}.json`, measured {env.get('date', '?')} on {env.get('cpus', '?')} CPUs, "
        f"torch {env.get('torch', '?')}, GPU: {env.get('cuda', None)}.*",
    ]
    return "\n".join(lines)


def result_tables() -> list[str]:
    """Names of the results files that hold a table."""
    names = []
    for path in sorted((ROOT / "bench" / "results").glob("*.json")):
        payload = json.loads(path.read_text())
        if isinstance(payload, dict) and payload.get("table"):
            names.append(path.stem)
    return names


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Render the ``bench-table`` markers; the Benchmarks page gets every results table at its end."""
    markdown = render(_MARKER.sub(lambda m: bench_table(m.group(1)), markdown))
    if page.file.src_uri == "benchmarks.md":
        sections = [f"### {name}\n\n{bench_table(name)}" for name in result_tables()]
        markdown += "\n\n## Every results table\n\nRead from `bench/results/*.json` when the site is built.\n\n"
        markdown += "\n\n".join(sections) + "\n"
    return markdown
