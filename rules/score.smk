rule score:
    input:
        "results/images/{model}/{prompt_set}/manifest.parquet",
    output:
        "results/scores/{model}/{prompt_set}.parquet",
    params:
        device=DEVICE,
        rewards=as_json(reward_config()),
    conda:
        "../environment.yml"
    benchmark:
        "results/benchmarks/score/{model}.{prompt_set}.tsv"
    log:
        "results/logs/score/{model}/{prompt_set}.log",
    shell:
        "dspo score --name {wildcards.model} --params {params.rewards:q} --manifest {input:q}"
        " --out {output:q} --threads {threads} --device {params.device:q} > {log:q} 2>&1"
