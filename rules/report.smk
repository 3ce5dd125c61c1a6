rule tables:
    input:
        score_files,
    output:
        win_rates="results/tables/win_rates.md",
        win_rates_csv="results/tables/win_rates.csv",
        mean_scores="results/tables/mean_scores.md",
        mean_scores_csv="results/tables/mean_scores.csv",
        win_rate_plot="results/plots/win_rates.png",
        mean_score_plot="results/plots/mean_scores.png",
    params:
        cfg=as_json(tables_config()),
    conda:
        "../environment.yml"
    log:
        "results/logs/tables.log",
    shell:
        "dspo tables --params {params.cfg:q} --inputs {input:q} --out results/tables"
        " --plots results/plots > {log} 2>&1"
