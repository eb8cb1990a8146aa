"""The README and the docs say what the results files say: every quoted figure is read from bench/results/."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.figures import FIGURE, FigureError, documents, render, value

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_quoted_figure_matches_its_results_file(path: Path) -> None:
    text = path.read_text()
    stale = f"{path.relative_to(ROOT)}: figures differ from bench/results/ (run python -m bench.figures)"
    assert render(text) == text, stale


def test_the_readme_results_table_and_headline_are_read_not_typed() -> None:
    readme = (ROOT / "README.md").read_text()
    results = readme[readme.index("## Results") : readme.index("What the callbacks cost")]
    rows = [line for line in results.splitlines() if line.startswith("| ") and not line.startswith("| network")]
    assert len(rows) >= 6
    for row in rows:
        size, accuracy = FIGURE.sub("FIGURE", row).split(" | ")[2:4]  # the markers hold " | " themselves
        assert "FIGURE" in size, row  # no figure typed by hand
        assert "FIGURE" in accuracy, row
    headline = readme[: readme.index("## Two commands")]
    assert len(FIGURE.findall(headline)) >= 4
    # outside the markers, no figure of the headline's kinds (bytes, x, pt) is typed
    bare = FIGURE.sub("", headline)
    assert not re.search(r"\b\d[\d,.]*\s*(bytes|x smaller|pt)\b", bare), bare


def test_a_figure_that_names_nothing_is_refused() -> None:
    with pytest.raises(FigureError, match="no results file"):
        value("no_such_results | * | bytes | mean")
    with pytest.raises(FigureError, match="no row"):
        value("rate_fmnist | method=nothing like it | bytes")
    with pytest.raises(FigureError, match="no column"):
        value("rate_fmnist | method=**rate_** | no such column")
    with pytest.raises(FigureError, match="selects 3 rows"):
        value("full_lenet300_seeds | * | bytes")


def test_statistics_over_rows() -> None:
    table = json.loads((Path(__file__).resolve().parents[1] / "bench/results/full_lenet300_seeds.json").read_text())
    drops = [float(row["drop (pt)"]) for row in table["table"]]
    assert len(drops) == 3
    assert value("full_lenet300_seeds | * | drop (pt) | max:.2f") == f"{max(drops):.2f}"
    mean, sd = value("full_lenet300_seeds | * | drop (pt) | mean_sd:.2f").split(" ± ")
    assert float(mean) == pytest.approx(sum(drops) / 3, abs=0.005)
    assert float(sd) > 0


def test_an_exclusion_selects_every_row_that_passes() -> None:
    worst = value(
        "resnet_defaults_fmnist | net=mobilenet_v2&callback!=dense | drop vs dense with BN re-estimated (pt) | max:.2f"
    )
    assert float(worst) < 50  # the dense rows (BatchNorm not re-estimated: 59.55) are excluded
