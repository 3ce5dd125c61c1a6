"""Tests for win rates, mean scores, their bootstrap intervals, tables and plots."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dspo.evaluation.intervals import interval_sentence
from dspo.evaluation.plots import image_grid, plot_mean_scores, plot_win_rates
from dspo.evaluation.statistics import (
    SCORE_COLUMNS,
    binomial_two_sided,
    head_to_head,
    load_scores,
    mean_scores,
    sign_test,
    win_rates,
)
from dspo.evaluation.tables import published_results, write_tables


def make_scores(
    n_prompts: int,
    n_seeds: int = 3,
    methods: dict[str, float] | None = None,
    rewards: tuple[str, ...] = ("pick",),
    prompt_sets: tuple[str, ...] = ("pickv2",),
    guidances: tuple[float, ...] = (7.5,),
    seed: int = 0,
) -> pd.DataFrame:
    """Synthetic scores: a per-prompt effect shared by all models plus noise and a shift."""
    methods = {"dspo": 0.5} if methods is None else methods
    rng = np.random.default_rng(seed)
    prompt_id = np.repeat(np.arange(n_prompts), n_seeds)
    seeds = np.tile(np.arange(n_seeds), n_prompts)
    frames = []
    for prompt_set in prompt_sets:
        for guidance in guidances:
            for reward in rewards:
                prompt_effect = rng.normal(0, 1, n_prompts)[prompt_id]
                for model, shift in {"base": 0.0, **methods}.items():
                    score = prompt_effect + rng.normal(0, 1, len(prompt_id)) + shift
                    frames.append(
                        pd.DataFrame(
                            {
                                "model": model,
                                "prompt_set": prompt_set,
                                "prompt_id": prompt_id,
                                "prompt": [f"prompt {i}" for i in prompt_id],
                                "seed": seeds,
                                "guidance": guidance,
                                "reward": reward,
                                "score": score,
                            }
                        )
                    )
    return pd.concat(frames, ignore_index=True)


def hand_frame(base: list[float], method: list[float], n_seeds: int = 2) -> pd.DataFrame:
    """Two models scored on len(base) samples, `n_seeds` consecutive samples per prompt."""
    n = len(base)
    rows = {
        "prompt_set": "pickv2",
        "prompt_id": np.arange(n) // n_seeds,
        "prompt": "a cat",
        "seed": np.arange(n) % n_seeds,
        "guidance": 7.5,
        "reward": "pick",
    }
    return pd.concat(
        [
            pd.DataFrame({"model": "base", **rows, "score": base}),
            pd.DataFrame({"model": "dspo", **rows, "score": method}),
        ],
        ignore_index=True,
    )[list(SCORE_COLUMNS)]


def reference_interval(
    per_prompt_sum: np.ndarray, per_prompt_count: np.ndarray, n_boot: int, seed: int, ci: float
) -> tuple[float, float]:
    """Slow prompt bootstrap with the documented draws, one Python iteration per draw."""
    n = len(per_prompt_sum)
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    boot = [per_prompt_sum[d].sum() / per_prompt_count[d].sum() for d in draws]
    low, high = np.quantile(boot, [(1 - ci) / 2, (1 + ci) / 2])
    return float(low), float(high)


def test_win_rate_counts_ties_half() -> None:
    # Per sample: win, tie, loss, win, tie, loss -> (1 + 0.5 + 0 + 1 + 0.5 + 0) / 6.
    scores = hand_frame([1, 2, 3, 4, 5, 6], [2, 2, 1, 5, 5, 0])
    row = win_rates(scores, n_boot=200).iloc[0]
    assert row["win_rate"] == pytest.approx(3 / 6)
    assert (row["method"], row["n_prompts"], row["n_samples"]) == ("dspo", 3, 6)
    scores = hand_frame([0, 0, 0, 0], [1, 0, 1, 1])
    assert win_rates(scores, n_boot=200).iloc[0]["win_rate"] == pytest.approx(3.5 / 4)


def test_interval_contains_estimate_and_shrinks_with_prompts() -> None:
    widths = []
    for n_prompts in (30, 1000):
        row = win_rates(make_scores(n_prompts, methods={"dspo": 0.3}), n_boot=500).iloc[0]
        assert row["ci_low"] < row["win_rate"] < row["ci_high"]
        widths.append(row["ci_high"] - row["ci_low"])
    assert widths[1] < widths[0] / 3


def test_method_identical_to_baseline_is_exactly_half() -> None:
    scores = make_scores(50)
    copy = scores[scores["model"] == "base"].assign(model="copy")
    result = win_rates(pd.concat([scores, copy]), n_boot=300)
    row = result[result["method"] == "copy"].iloc[0]
    assert (row["win_rate"], row["ci_low"], row["ci_high"]) == (0.5, 0.5, 0.5)


def test_bootstrap_resamples_prompts_not_seeds() -> None:
    scores = make_scores(40, n_seeds=4, methods={"dspo": 0.2})
    result = win_rates(scores, n_boot=400, seed=3).iloc[0]

    base = scores[scores["model"] == "base"].set_index(["prompt_id", "seed"])["score"]
    method = scores[scores["model"] == "dspo"].set_index(["prompt_id", "seed"])["score"]
    win = (0.5 + 0.5 * np.sign(method - base)).groupby(level="prompt_id").agg(["sum", "count"])
    low, high = reference_interval(
        win["sum"].to_numpy(), win["count"].to_numpy(), n_boot=400, seed=3, ci=0.95
    )
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((low, high), abs=1e-12)

    # Copying every seed under a new seed id adds no independent prompt, so the interval stays.
    copied = scores.assign(seed=scores["seed"] + 100)
    doubled = win_rates(pd.concat([scores, copied]), n_boot=400, seed=3).iloc[0]
    assert doubled["n_samples"] == 2 * result["n_samples"]
    assert (doubled["ci_low"], doubled["ci_high"]) == pytest.approx(
        (result["ci_low"], result["ci_high"]), abs=1e-12
    )


def test_mean_scores_match_hand_values_and_reference_interval() -> None:
    scores = hand_frame([1, 3, 2, 2, 10, 12], [0, 0, 0, 0, 0, 0])
    result = mean_scores(scores, n_boot=300, seed=1).set_index("model")
    assert result.loc["base", "mean"] == pytest.approx(5.0)
    assert result.loc["dspo", ["mean", "ci_low", "ci_high"]].tolist() == [0, 0, 0]
    low, high = reference_interval(np.array([4.0, 4, 22]), np.array([2.0, 2, 2]), 300, 1, 0.95)
    assert result.loc["base", ["ci_low", "ci_high"]].tolist() == pytest.approx([low, high])


def test_groups_do_not_influence_each_other() -> None:
    # A method scored on half the prompts is bootstrapped over its own prompts only, and a
    # group's interval does not depend on which other groups are in the frame.
    scores = make_scores(60, methods={"dspo": 0.3, "sft": 0.1}, rewards=("pick", "hps"))
    partial = (scores["model"] == "sft") & (scores["prompt_id"] >= 30)
    scores = scores[~partial]
    full = win_rates(scores, n_boot=300).set_index(["reward", "method"])
    assert full.loc[("pick", "sft"), "n_prompts"] == 30
    for reward, method in full.index:
        keep = scores["reward"].eq(reward) & scores["model"].isin(["base", method])
        alone = win_rates(scores[keep], n_boot=300).iloc[0]
        assert full.loc[(reward, method), ["ci_low", "ci_high"]].tolist() == pytest.approx(
            [alone["ci_low"], alone["ci_high"]], abs=1e-12
        )


def test_deterministic_given_seed() -> None:
    scores = make_scores(80, methods={"dspo": 0.3, "sft": 0.1}, rewards=("pick", "hps"))
    first = win_rates(scores, n_boot=300, seed=7)
    pd.testing.assert_frame_equal(
        first, win_rates(scores.sample(frac=1, random_state=1), n_boot=300, seed=7)
    )
    other = win_rates(scores, n_boot=300, seed=8)
    assert not np.allclose(first["ci_low"], other["ci_low"])
    pd.testing.assert_frame_equal(first[["win_rate"]], other[["win_rate"]])


def test_missing_baseline_rows_name_model_and_prompt_set() -> None:
    scores = make_scores(10, prompt_sets=("pickv2", "parti"), guidances=(3.0, 7.5))
    drop = scores["model"].eq("base") & scores["prompt_set"].eq("parti")
    drop &= scores["guidance"].eq(3.0) & scores["prompt_id"].eq(4)
    with pytest.raises(ValueError, match=r"model 'dspo', prompt_set 'parti', guidance 3\.0"):
        win_rates(scores[~drop])
    with pytest.raises(ValueError, match="baseline model 'sd15'"):
        win_rates(scores, baseline="sd15")


def test_duplicated_rows_are_rejected() -> None:
    scores = make_scores(5)
    with pytest.raises(ValueError, match="duplicated"):
        win_rates(pd.concat([scores, scores.iloc[:1]]))


def test_load_scores_concatenates_and_names_missing_column(tmp_path: Path) -> None:
    scores = make_scores(5, methods={"dspo": 0.1, "sft": 0.2})
    paths = [tmp_path / "base.parquet", tmp_path / "methods.parquet"]
    scores[scores["model"] == "base"].to_parquet(paths[0])
    scores[scores["model"] != "base"].to_parquet(paths[1])
    loaded = load_scores(paths)
    assert len(loaded) == len(scores)
    assert list(loaded.columns) == [*SCORE_COLUMNS, "replicate"]
    assert (loaded["replicate"] == 0).all()  # files without the column are one replicate

    broken = tmp_path / "broken.parquet"
    scores.drop(columns="seed").to_parquet(broken)
    with pytest.raises(ValueError, match=r"broken\.parquet.*seed"):
        load_scores([paths[0], broken])


def table_rows(markdown: str, guidance: str) -> list[list[str]]:
    """Body rows of the table under `## guidance <guidance>`, as lists of cells."""
    section = markdown.split(f"## guidance {guidance}\n")[1].split("\n## ")[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")][1:]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_write_tables(tmp_path: Path) -> None:
    methods = {"sft": 0.1, "kto": 0.3, "dspo": 0.6, "unlisted": 1.0}
    scores = make_scores(
        40,
        methods=methods,
        rewards=("pick", "hps", "clip"),
        prompt_sets=("pickv2", "parti"),
        guidances=(3.0, 7.5),
    )
    labels = {"dspo": "DSPO", "pickv2": "PickV2", "pick": "PickScore", "base": "SD1.5"}
    args = (scores, tmp_path / "a", ["sft", "kto", "dspo"], ["pick", "hps"], ["pickv2", "parti"])
    paths = write_tables(*args, labels=labels, n_boot=200)
    assert [p.name for p in paths] == [
        "win_rates.csv",
        "win_rates.md",
        "mean_scores.csv",
        "mean_scores.md",
        "head_to_head.csv",
        "head_to_head.md",
    ]
    again = write_tables(scores, tmp_path / "b", *args[2:], labels=labels, n_boot=200)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]

    wins = pd.read_csv(paths[0])
    assert len(wins) == 2 * 2 * 2 * 3  # guidances x prompt sets x rewards x methods
    assert set(wins["method"]) == {"sft", "kto", "dspo"}

    markdown = paths[1].read_text()
    assert "SD1.5" in markdown and interval_sentence(1, n_boot=200) in markdown
    assert "PickV2 40 × 3, parti 40 × 3" in markdown
    for guidance in ("3.0", "7.5"):
        rows = table_rows(markdown, guidance)
        assert [row[:2] for row in rows] == [
            ["PickV2", "sft"],
            ["", "kto"],
            ["", "DSPO"],
            ["parti", "sft"],
            ["", "kto"],
            ["", "DSPO"],
        ]
        # DSPO has by far the largest shift, so it holds the bold best in every column.
        for row in rows:
            for cell in row[2:]:
                assert re.fullmatch(r"(\*\*)?\d+\.\d(\*\*)? \[\d+\.\d, \d+\.\d\]( [▲▼])?", cell)
                assert cell.startswith("**") == (row[1] == "DSPO")
    header = next(line for line in markdown.splitlines() if line.startswith("| Prompt set"))
    assert header == "| Prompt set | Method | PickScore | hps |"

    means = paths[3].read_text()
    rows = table_rows(means, "7.5")
    assert [row[1] for row in rows] == ["SD1.5", "sft", "kto", "DSPO"] * 2
    assert all(row[2].startswith("**") == (row[1] == "DSPO") for row in rows)

    with pytest.raises(ValueError, match="mpo"):
        write_tables(scores, tmp_path / "c", ["mpo"], ["pick"], ["pickv2"])


def test_plots_are_written(tmp_path: Path) -> None:
    methods = ["sft", "dspo"]
    scores = make_scores(
        20, methods={"sft": 0.1, "dspo": 0.4}, rewards=("pick", "hps"), guidances=(3.0, 7.5)
    )
    win_png = plot_win_rates(
        win_rates(scores, n_boot=100), tmp_path / "win.png", methods, ["pick", "hps"], ["pickv2"]
    )
    mean_png = plot_mean_scores(
        mean_scores(scores, n_boot=100),
        tmp_path / "plots" / "mean.png",
        methods,
        ["pick", "hps"],
        ["pickv2"],
        labels={"base": "SD1.5"},
    )
    for png in (win_png, mean_png):
        data = png.read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000


def test_plots_draw_each_model_once_in_the_same_colour(tmp_path: Path, monkeypatch) -> None:
    from matplotlib.colors import to_rgba

    import dspo.evaluation.plots as plots

    legends = {}

    def keep_legend(fig, axes, out_png, n_entries, note):
        handles, names = axes[0][0].get_legend_handles_labels()
        colours = [
            to_rgba(h.patches[0].get_facecolor() if hasattr(h, "patches") else h[0].get_color())
            for h in handles
        ]
        legends[out_png.stem] = dict(zip(names, colours, strict=True))
        assert "95 %" in note
        return out_png

    monkeypatch.setattr(plots, "_save", keep_legend)
    methods = ["sft", "dspo", "mapo"]
    scores = make_scores(20, methods={"sft": 0.1, "dspo": 0.4, "mapo": 0.0}, rewards=("pick",))
    plot_win_rates(
        win_rates(scores, n_boot=50), tmp_path / "win.png", methods, ["pick"], ["pickv2"]
    )
    plot_mean_scores(
        mean_scores(scores, n_boot=50), tmp_path / "mean.png", methods, ["pick"], ["pickv2"]
    )
    assert list(legends["mean"]) == ["base", *methods]
    for method in methods:
        assert tuple(legends["mean"][method]) == tuple(legends["win"][method])
    # The baseline stands apart from every colour a method can take (ten of them).
    ten = [f"m{i}" for i in range(10)]
    ten_scores = make_scores(4, methods=dict.fromkeys(ten, 0.1), rewards=("pick",))
    plot_mean_scores(
        mean_scores(ten_scores, n_boot=10), tmp_path / "mean.png", ten, ["pick"], ["pickv2"]
    )
    base = np.array(legends["mean"]["base"][:3])
    assert all(np.linalg.norm(base - np.array(legends["mean"][m][:3])) > 0.5 for m in ten)
    with pytest.raises(ValueError, match="baseline"):
        plot_mean_scores(
            mean_scores(scores, n_boot=50),
            tmp_path / "m.png",
            ["base", *methods],
            ["pick"],
            ["pickv2"],
        )


def test_binomial_two_sided_matches_hand_values() -> None:
    assert binomial_two_sided(0, 0) == 1.0
    assert binomial_two_sided(0, 10) == pytest.approx(2 / 1024)
    assert binomial_two_sided(9, 10) == pytest.approx(2 * 11 / 1024)
    assert binomial_two_sided(5, 10) == 1.0
    assert binomial_two_sided(1500, 3000) == 1.0  # large n stays finite
    assert 0 < binomial_two_sided(1400, 3000) < 1e-3


def test_sign_test_uses_one_sign_per_prompt() -> None:
    # Prompt 0: method better on both seeds; prompt 1: a tie on average; prompt 2: better
    # on one seed by more than it loses on the other, so its mean difference is positive.
    scores = hand_frame(base=[0, 0, 1, 1, 5, 5], method=[1, 1, 2, 0, 9, 4])
    out = sign_test(scores)
    assert out[["n_better", "n_worse"]].values.tolist() == [[2, 0]]
    assert out["p_value"].item() == pytest.approx(binomial_two_sided(2, 2))


def test_head_to_head_is_complementary() -> None:
    scores = make_scores(30, methods={"sft": 0.2, "dspo": 0.6})
    matrix = head_to_head(scores, ["base", "sft", "dspo"], n_boot=100)
    assert len(matrix) == 6 and not (matrix["model"] == matrix["opponent"]).any()
    rate = matrix.set_index(["model", "opponent"])["win_rate"]
    for a, b in [("base", "sft"), ("base", "dspo"), ("sft", "dspo")]:
        assert rate[(a, b)] + rate[(b, a)] == pytest.approx(1.0)
    against_base = win_rates(scores, n_boot=100).set_index("method")["win_rate"]
    assert rate[("dspo", "base")] == pytest.approx(against_base["dspo"])


def test_paper_tables_show_published_numbers(tmp_path: Path) -> None:
    published = published_results()
    assert set(published["table"]) == {"table1", "table2", "table4", "table5", "table6"}
    dspo = published.set_index(["table", "prompt_set", "method", "reward"])["win_rate"]
    assert dspo[("table1", "pickv2", "dspo", "pickscore")] == 73.60
    assert dspo[("table2", "hpsv2", "dspo", "hps")] == 83.47

    scores = make_scores(
        20, methods={"sft": 0.1, "dspo": 0.6, "ddspo": 0.2}, rewards=("pickscore", "hps")
    )
    tables = {
        "table1": {"title": "Table 1", "methods": ["sft", "ddspo", "dspo"], "paper": "table1"},
        "table6": {"title": "Ablations", "methods": ["dspo"], "prompt_sets": ["pickv2"]},
    }
    args = (["sft", "dspo", "ddspo"], ["pickscore", "hps"], ["pickv2"])
    paths = write_tables(scores, tmp_path, *args, n_boot=100, paper_tables=tables)
    names = [p.name for p in paths]
    assert names[-4:] == ["table1.csv", "table1.md", "table6.csv", "table6.md"]
    table1 = (tmp_path / "table1.md").read_text()
    rows = {row[1]: row for row in table_rows(table1, "7.5")}
    assert list(rows) == ["sft", "ddspo", "dspo"]
    assert rows["dspo"][2].endswith("(73.6)") and rows["sft"][3].endswith("(84.2)")
    assert "(" not in rows["ddspo"][2]  # the paper has no DDSPO row
    assert pd.read_csv(tmp_path / "table1.csv")["paper_win_rate"].notna().sum() == 4
    assert "(" not in (tmp_path / "table6.md").read_text().split("|---")[1]


def test_image_grid_has_a_column_per_model(tmp_path: Path) -> None:
    from PIL import Image

    manifests = {}
    for shade, model in enumerate(["base", "dspo", "sft"]):
        folder = tmp_path / model
        folder.mkdir()
        rows = []
        for prompt_id in range(3):
            path = f"p{prompt_id}.png"
            Image.new("RGB", (16, 16), (80 * shade, 20 * prompt_id, 0)).save(folder / path)
            rows.append({"prompt_id": prompt_id, "prompt": f"prompt {prompt_id}", "seed": 0})
            rows[-1].update(guidance=3.0, path=path)
        pd.DataFrame(rows).to_parquet(folder / "manifest.parquet")
        manifests[model] = folder / "manifest.parquet"
    png = image_grid(manifests, tmp_path / "grid.png", {"base": "SD1.5"}, n_prompts=2)
    assert png.read_bytes().startswith(b"\x89PNG")
    (tmp_path / "sft" / "p1.png").unlink()
    pd.read_parquet(manifests["sft"]).head(1).to_parquet(manifests["sft"])
    with pytest.raises(ValueError, match="sft"):
        image_grid(manifests, tmp_path / "grid2.png", n_prompts=2)


def test_editing_grid_shows_the_source_image_and_each_row_names_its_seed(
    tmp_path: Path, monkeypatch
) -> None:
    import io

    from matplotlib.figure import Figure
    from PIL import Image

    manifests = {}
    for shade, model in enumerate(["base", "dspo"]):
        folder = tmp_path / model
        folder.mkdir()
        Image.new("RGB", (16, 16), (80 * shade, 0, 0)).save(folder / "p0.png")
        row = {"prompt_id": 0, "prompt": "make it blue", "seed": 7, "guidance": 2.0}
        pd.DataFrame([{**row, "path": "p0.png"}]).to_parquet(folder / "manifest.parquet")
        manifests[model] = folder / "manifest.parquet"
    magenta = io.BytesIO()
    Image.new("RGB", (16, 16), (255, 0, 255)).save(magenta, format="PNG")
    sources = pd.DataFrame({"prompt_id": [0], "image": [magenta.getvalue()]})

    drawn = []
    original = Figure.savefig
    monkeypatch.setattr(
        Figure, "savefig", lambda fig, *a, **k: (drawn.append(fig), original(fig, *a, **k))
    )
    image_grid(manifests, tmp_path / "edit.png", n_prompts=1, sources=sources)
    axes = drawn[-1].axes
    assert [ax.get_title() for ax in axes] == ["source", "base", "dspo"]
    assert axes[0].images[0].get_array()[0, 0].tolist()[:3] == [255, 0, 255]
    assert "seed 7" in axes[0].get_ylabel() and "make it blue" in axes[0].get_ylabel()
    with pytest.raises(ValueError, match="prompt_id 0"):
        image_grid(manifests, tmp_path / "e2.png", n_prompts=1, sources=sources.iloc[:0])
