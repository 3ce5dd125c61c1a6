# One job per model scores all of its image sets, each reward model loaded once. `dspo score`
# checks every image against its manifest's key before scoring. Snakemake removes the old
# tables when the job starts; `update()` would keep them, but restores them after a failure as
# fresh copies, newer than the manifests, so stale scores would then count as current.
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


# The attribute-binding sets, scored by the B-VQA scorer alone (evaluation.attribute_binding).
if BINDING_SETS:

    rule score_binding:
        input:
            manifests=expand(
                "results/images/{{model}}/{prompt_set}/manifest.parquet", prompt_set=BINDING_SETS
            ),
            fetched=lambda wc: fetched(*(i for i in FETCH_ITEMS if i.startswith("binding."))),
        output:
            expand("results/scores_binding/{{model}}/{prompt_set}.parquet", prompt_set=BINDING_SETS),
        params:
            device=DEVICE,
            scorer=as_json(binding_scorer()),
        conda:
            "../environment.yml"
        benchmark:
            "results/benchmarks/score_binding/{model}.tsv"
        log:
            "results/logs/score_binding/{model}.log",
        shell:
            "dspo score --name {wildcards.model} --params {params.scorer:q} --manifest {input.manifests:q}"
            " --out {output:q} --threads {threads} --device {params.device:q} > {log:q} 2>&1"
# Image quality (evaluation.quality): the Inception Score, and FID against a reference image
# set, of each prompt set's images, one job per model with the classifier loaded once.
rule quality:
    input:
        manifests=expand(
            "results/images/{{model}}/{prompt_set}/manifest.parquet", prompt_set=QUALITY_SETS
        ),
        fetched=fetched("quality.inception"),
    output:
        "results/quality/{model}.csv",
    params:
        device=DEVICE,
        cfg=as_json(QUALITY),
    conda:
        "../environment.yml"
    benchmark:
        "results/benchmarks/quality/{model}.tsv"
    log:
        "results/logs/quality/{model}.log",
    shell:
        "dspo quality --params {params.cfg:q} --name {wildcards.model} --manifest {input.manifests:q}"
        " --out {output:q} --threads {threads} --device {params.device:q} > {log:q} 2>&1"
