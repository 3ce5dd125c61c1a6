"""The Snakemake report of a run with the default preset's kinds of model id, opened in headless
Chromium.

The run is the smoke preset's (tests/conftest.py) extended with the two kinds of model id the
smoke preset lacks: training replicates of one method (``training.replicates``, so a model
``{method}-r1`` beside ``{method}``, as the default preset trains every method three times)
and a one-point sensitivity sweep. Only the two added models train, at the smoke preset's
scale. One replicated method gives every wording a replicated run shows (a replicate's
caption, intervals over replicates crossed with prompts, beside rows trained once); every
method replicated would add a dozen models that show nothing new.

Every ``report(...)`` output the workflow declares must be listed in the report under its
category, open (images shown, tables downloaded byte for byte) and show its caption.
Screenshots of the main page and of every opened item land in the test's folder, and also in
$DSPO_REPORT_SHOTS when set.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from dspo.config.experiments import trained_models
from dspo.config.step import deep_merge
from dspo.evaluation.intervals import interval_sentence
from tests.workflow_run import REPO, SMOKE, copy_run, snakemake

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary on PATH (Debian: apt-get install chromium)"
)
# The report is one HTML file with its scripts and every item inlined as a data URI, so it
# opens offline; "Other" is the report's subcategory for items that name none.
NO_SUBCATEGORY = "Other"
DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
# The run's added model ids (see above): a method's second replicate and a sweep point.
REPLICATED = "diffusion_dpo"  # one of Table 1's methods, with no kept step of its own
REPLICATES = 2
SWEEP = {"lam": {"method": "dspo", "keys": ["params.lam", "params.kappa"], "values": [0.1]}}
OVERLAY = {"methods": {REPLICATED: {"training": {"replicates": REPLICATES}}}, "sweeps": SWEEP}
# The run's config as Snakemake merges it.
RUN = deep_merge(deep_merge(DEFAULT, yaml.safe_load(SMOKE.read_text())), OVERLAY)


@pytest.fixture(scope="module")
def report_run(smoke_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A copy of the smoke run carried on to the replicates and a sweep point: its folder and
    config files."""
    folder = tmp_path_factory.mktemp("default-ids")
    workdir = folder / "run"
    copy_run(smoke_run, workdir)
    overlay = folder / "default_ids.yaml"
    overlay.write_text(yaml.safe_dump(OVERLAY))
    configs = [str(SMOKE), str(overlay)]
    snakemake("--cores", "2", "all", "--configfile", *configs, cwd=workdir)
    return workdir, configs


@pytest.fixture(scope="module")
def report_html(report_run: tuple[Path, list[str]], tmp_path_factory) -> Path:
    workdir, configs = report_run
    path = tmp_path_factory.mktemp("report") / "report.html"
    snakemake("--report", str(path), "--configfile", *configs, cwd=workdir)
    return path


@pytest.fixture(scope="module")
def declared_items(report_run: tuple[Path, list[str]]) -> dict[str, dict]:
    """Every report(...) output of the rules as the run's files (tests/report_items.py)."""
    workdir, configs = report_run
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "report_items.py"), str(REPO / "Snakefile")]
        + [str(workdir), *configs],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return json.loads(result.stdout)


def caption_opening(caption_file: Path, words: int = 8) -> str:
    """The first words of a caption's first literal run of at least five words.

    Jinja placeholders render run-specific values (a method's name, its step count), so only
    text between them is known before the run: the opening is taken from one such run.
    """
    jinja = r"\{%.*?%\}|\{\{.*?\}\}|\{#.*?#\}"
    for fragment in re.split(jinja, caption_file.read_text(), flags=re.S):
        literal = re.sub(r"\*\*|``|`", "", fragment).split()
        if len(literal) >= 5:
            return " ".join(literal[:words])
    return ""


def shown_text(element_text: str) -> str:
    return " ".join(element_text.split())


def save_shot(page, name: str, folder: Path) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert Image.open(path).size[0] > 0
    if shots := os.environ.get("DSPO_REPORT_SHOTS"):
        Path(shots).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(shots) / path.name)
    return path


def test_every_declared_report_item_is_listed_and_opens_with_its_caption(
    report_html: Path,
    declared_items: dict[str, dict],
    report_run: tuple[Path, list[str]],
    tmp_path: Path,
) -> None:
    from playwright.sync_api import sync_playwright

    workdir = report_run[0]
    captions: dict[str, str] = {}
    assert declared_items, "the workflow declares no report(...) outputs"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1600, "height": 1000}, accept_downloads=True)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        # The report's side bar (menu, item lists, item details) and its breadcrumbs.
        menu, crumbs = page.locator("nav").first, page.locator("nav").nth(1)
        page.goto(report_html.as_uri())
        page.get_by_text("Results", exact=True).wait_for()
        save_shot(page, "report_main", tmp_path)
        # The report's own list of items and their menu, as its page holds them.
        categories: dict[str, dict[str, list[str]]] = page.evaluate("categories")
        listed = {
            path: (category, subcategory)
            for category, subcategories in categories.items()
            for subcategory, paths in subcategories.items()
            for path in paths
        }
        assert sorted(listed) == sorted(declared_items)
        for category in categories:
            assert menu.get_by_text(category, exact=True).is_visible(), category

        for path, (category, subcategory) in sorted(listed.items()):
            declared = declared_items[path]
            assert category == declared["category"], path
            menu.get_by_text(category, exact=True).click()
            if subcategory != NO_SUBCATEGORY or len(categories[category]) > 1:
                menu.get_by_text(subcategory, exact=True).click()
            # A row shows the item's label values if it has labels, else its path.
            labels = page.evaluate(f"results[{json.dumps(path)}].labels") or {}
            row = page.locator("tr")
            for cell in [str(v) for v in labels.values()] or [path]:
                row = row.filter(
                    has=page.locator("td", has_text=re.compile(f"^{re.escape(cell)}$"))
                )
            view, info = row.locator("a").nth(0), row.locator("a").nth(1)
            shot_name = "item_" + re.sub(r"\W+", "_", path.removeprefix("results/"))
            on_disk = workdir / path
            if page.evaluate(f"results[{json.dumps(path)}].mime_type").startswith("image/"):
                view.click()
                # The item's own picture, loaded (the report's logo is an image too).
                shown = page.wait_for_function(
                    """path => [...document.images].find(
                        img => img.src === results[path].data_uri && img.naturalWidth > 0)""",
                    arg=path,
                )
                width = page.evaluate("img => img.naturalWidth", shown)
                if on_disk.suffix != ".svg":  # shown at the file's own size
                    assert width == Image.open(on_disk).size[0], path
            else:
                # Tables open as downloads of the file itself.
                with page.expect_download() as download:
                    view.click()
                assert Path(download.value.path()).read_bytes() == on_disk.read_bytes(), path
                assert (
                    base64.b64decode(
                        page.evaluate(f"results[{json.dumps(path)}].data_uri").split(",", 1)[1]
                    )
                    == on_disk.read_bytes()
                )
            info.click()
            menu.get_by_text("Description", exact=True).wait_for()
            caption = shown_text(menu.locator(".prose").inner_text())
            opening = caption_opening(Path(declared["caption"]))
            assert opening and opening in caption, (path, opening, caption)
            assert "{{" not in caption and "{%" not in caption, (path, caption)
            captions[path] = caption
            save_shot(page, shot_name, tmp_path)
            # Back to the categories through the breadcrumbs (loading the 5 MB page again
            # for each item cost Chromium about 0.6 s).
            crumbs.get_by_text("Results", exact=True).click()
        assert errors == []
        browser.close()
    # Each model of the run, replicates included, and the sweep point has its training view,
    # captioned with where it comes from.
    views = {f"results/plots/training/{model}.png" for model in trained_models(RUN)}
    assert "results/plots/training/lam-0.1.png" in views
    assert views <= set(captions)
    replicate = f"{REPLICATED}-r{REPLICATES - 1}"
    assert replicate in trained_models(RUN)
    caption = captions[f"results/plots/training/{replicate}.png"]
    assert f"training replicate {REPLICATES - 1} of the method {REPLICATED}" in caption
    assert f"objective {REPLICATED}" in caption
    caption = captions["results/plots/training/lam-0.1.png"]
    assert "point 0.1 of the sweep lam over params.lam, params.kappa of the method dspo" in caption
    # Captions, plot notes and table notes say what the intervals resample, in one wording:
    # REPLICATED trained REPLICATES times, every other model once.
    for path, (in_caption, in_file) in interval_expectations().items():
        assert "training replicates" in in_caption or "sweep" in path, (path, in_caption)
        assert in_caption in captions[path], (path, in_caption, captions[path])
        if path.endswith(".png"):  # the plot's own note (PNG text keyword "Description")
            note = Image.open(workdir / path).text["Description"]
        else:  # the table's Markdown note
            note = (workdir / path).with_suffix(".md").read_text()
        assert in_file in " ".join(note.split()), (path, in_file, note)


def interval_expectations() -> dict[str, tuple[str, str]]:
    """Per report item of the tables step, the sentences its caption and its file's own note
    (a plot's, or the table's Markdown) must hold: what the intervals resample, for the
    replicates of the models shown (the base model has one)."""
    groups = [model.group for model in trained_models(RUN).values()]
    methods = [groups.count(method) for method in RUN["methods"]]
    table1 = [groups.count(method) for method in RUN["evaluation"]["tables"]["table1"]["methods"]]
    boot = yaml.safe_load(SMOKE.read_text())["evaluation"]["bootstrap"]["samples"]
    return {
        "results/tables/win_rates.csv": (interval_sentence(methods, n_boot=boot),) * 2,
        "results/tables/mean_scores.csv": (interval_sentence([1, *methods], n_boot=boot),) * 2,
        "results/tables/head_to_head.csv": (interval_sentence([1, *methods], n_boot=boot),) * 2,
        "results/tables/sweep_lam.csv": (interval_sentence(1, n_boot=boot),) * 2,
        "results/tables/table1.md": (
            interval_sentence(methods, n_boot=boot),
            interval_sentence(table1, n_boot=boot),
        ),
        "results/plots/win_rates.png": (interval_sentence(methods, "Error bars"),) * 2,
        "results/plots/mean_scores.png": (interval_sentence([1, *methods], "Error bars"),) * 2,
        "results/plots/sweep_lam.png": (interval_sentence(1, "Bands"),) * 2,
    }
