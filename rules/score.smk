# One job per model scores all of its image sets, each reward model loaded once.
rule score:
    input:
        manifests=expand(
            "results/images/{{model}}/{image_set}/manifest.parquet", image_set=EVAL_SETS
        ),
        fetched=rewards_input,
    output:
        expand("results/scores/{{model}}/{image_set}.parquet", image_set=EVAL_SETS),
    params:
        device=DEVICE,
        rewards=as_json(reward_config()),
    conda:
        "../environment.yml"
    benchmark:
        "results/benchmarks/score/{model}.tsv"
    log:
        "results/logs/score/{model}.log",
    shell:
        "dspo score --name {wildcards.model} --params {params.rewards:q} --manifest {input.manifests:q}"
        " --out {output:q} --threads {threads} --device {params.device:q} > {log:q} 2>&1"
