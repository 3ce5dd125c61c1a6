# One job per model samples every prompt set and makes the edits: the model and libraries
# load once, not once per set (on the toy world, loading took longer than sampling a set).
# Each image's key covers what made it, so a job rerun for a changed setting remakes only the
# images that setting changes (a new strength: the edits).
rule generate:
    input:
        model=model_input,
        prompts=expand("results/data/prompts/{prompt_set}.parquet", prompt_set=SAMPLED_SETS),
        editing=editing_table_input,
    output:
        prompts=expand(
            "results/images/{{model}}/{prompt_set}/manifest.parquet", prompt_set=SAMPLED_SETS
        ),
        editing=editing_manifest_output(),
    params:
        device=DEVICE,
        cfg=as_json(generation_config()),
        model=model_path,
        base=BASE["path"],
        editing=editing_options,
    conda:
        "../environment.yml"
    benchmark:
        "results/benchmarks/generate/{model}.tsv"
    log:
        "results/logs/generate/{model}.log",
    shell:
        "dspo generate --params {params.cfg:q} --model {params.model:q} --base {params.base:q}"
        " --prompts {input.prompts:q} --out {output.prompts:q} {params.editing}"
        " --threads {threads} --device {params.device:q} > {log:q} 2>&1"
