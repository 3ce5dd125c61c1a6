rule tables:
    input:
        scores=score_files,
        pairs_report=PAIRS_REPORT,
        nodup_report=nodup_report_input,
        quality=quality_files,
        binding=binding_table_file,
    output:
        win_rates="results/tables/win_rates.md",
        win_rates_csv=report(
            "results/tables/win_rates.csv",
            caption="../workflow/report/win_rates_table.rst",
            category="Tables",
        ),
        mean_scores="results/tables/mean_scores.md",
        head_to_head="results/tables/head_to_head.md",
        head_to_head_csv=report(
            "results/tables/head_to_head.csv",
            caption="../workflow/report/head_to_head.rst",
            category="Tables",
        ),
        paper_tables=report(
            expand("results/tables/{table}.{ext}", table=PAPER_TABLES, ext=["md", "csv"]),
            caption="../workflow/report/paper_table.rst",
            category="Paper tables",
        ),
        mean_scores_csv=report(
            "results/tables/mean_scores.csv",
            caption="../workflow/report/mean_scores_table.rst",
            category="Tables",
        ),
        win_rate_plot=report(
            "results/plots/win_rates.png",
            caption="../workflow/report/win_rates_plot.rst",
            category="Plots",
        ),
        mean_score_plot=report(
            "results/plots/mean_scores.png",
            caption="../workflow/report/mean_scores_plot.rst",
            category="Plots",
        ),
        step_selection=report(
            step_selection_outputs(),
            caption="../workflow/report/step_selection.rst",
            category="Tables",
        ),
        extra_tables=report(
            expand("results/tables/{table}.{ext}", table=EXTRA_TABLES, ext=["md", "csv"]),
            caption="../workflow/report/quality_table.rst",
            category="Tables",
        ),
        sweep_tables=report(
            expand("results/tables/sweep_{sweep}.{ext}", sweep=SWEEPS, ext=["md", "csv"]),
            caption="../workflow/report/sweep_table.rst",
            category="Sweeps",
        ),
        sweep_plots=report(
            expand("results/plots/sweep_{sweep}.png", sweep=SWEEPS),
            caption="../workflow/report/sweep_plot.rst",
            category="Sweeps",
        ),
    log:
        "results/logs/tables.log",
    benchmark:
        "results/benchmarks/tables/job.tsv"
    conda:
        "../environment.yml"
    params:
        cfg=as_json(tables_config()),
        # For the captions only: what the intervals resample (workflow/report/*.rst).
        intervals=interval_captions(),
        nodup=nodup_report_option,
        quality=quality_option,
        binding=binding_table_option,
        # The folders of the declared outputs, where `dspo tables` writes them.
        tables=lambda wc, output: os.path.dirname(output.win_rates),
        plots=lambda wc, output: os.path.dirname(output.win_rate_plot),
    shell:
        "dspo tables --params {params.cfg:q} --scores {input.scores:q} --out {params.tables:q}"
        " --plots {params.plots:q} --pairs-report {input.pairs_report:q} {params.nodup}"
        " {params.quality} {params.binding}"
        " > {log:q} 2>&1"


rule grid:
    input:
        manifests=expand(
            "results/images/{model}/{{prompt_set}}/manifest.parquet", model=GRID_MODELS
        ),
        sources=grid_sources,
    output:
        report(
            "results/plots/grid_{prompt_set}.png",
            caption="../workflow/report/grid.rst",
            category="Images",
        ),
    log:
        "results/logs/grid/{prompt_set}.log",
    benchmark:
        "results/benchmarks/grid/{prompt_set}.tsv"
    conda:
        "../environment.yml"
    params:
        cfg=as_json({"models": GRID_MODELS, "labels": tables_config()["labels"], "prompts": 6}),
        sources=grid_sources_option,
    shell:
        "dspo grid --params {params.cfg:q} --manifests {input.manifests:q} {params.sources}"
        " --out {output:q} > {log:q} 2>&1"


rule training_view:
    input:
        "results/models/{method}",
    output:
        report(
            "results/plots/training/{method}.png",
            caption="../workflow/report/training_view.rst",
            category="Training",
            labels={"method": "{method}"},
        ),
    log:
        "results/logs/training_view/{method}.log",
    conda:
        "../environment.yml"
    params:
        cfg=lambda wc: as_json({"title": tables_config()["labels"].get(wc.method, wc.method)}),
        run_dir="results/train/{method}",
        # For the caption only (workflow/report/training_view.rst): a replicate or sweep point
        # has no entry of its own under `methods`.
        caption=lambda wc: training_view_caption(wc.method),
    shell:
        "dspo training-view --params {params.cfg:q} --input {params.run_dir:q} --out {output:q}"
        " > {log:q} 2>&1"


rule summary:
    input:
        win_rates="results/tables/win_rates.csv",
        head_to_head="results/tables/head_to_head.csv",
        grids=expand("results/plots/grid_{prompt_set}.png", prompt_set=TEST_SETS),
    output:
        "results/summary.json",
    log:
        "results/logs/summary.log",
    conda:
        "../environment.yml"
    params:
        cfg=as_json(summary_config()),
    shell:
        # The grids are inputs only so that the summary, read from every job's benchmark
        # file, is written after the last job.
        "dspo summary --params {params.cfg:q} --input {input.win_rates:q}"
        " --head-to-head {input.head_to_head:q} --out {output:q}"
        " > {log:q} 2>&1"


if BINDING_SETS:

    rule binding_table:
        input:
            binding_score_files,
        output:
            csv=BINDING_TABLE,
            md="results/tables/attribute_binding.md",
        log:
            "results/logs/binding_table.log",
        conda:
            "../environment.yml"
        params:
            cfg=as_json(binding_config()),
        shell:
            "dspo binding-table --params {params.cfg:q} --scores {input:q} --out {output.csv:q}"
            " > {log:q} 2>&1"
