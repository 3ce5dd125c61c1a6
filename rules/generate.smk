# One job per model samples every prompt set: the model and libraries load once, not once
# per set (on the toy world, loading took longer than sampling a set).
rule generate:
    input:
        model=model_input,
        prompts=expand("results/data/prompts/{prompt_set}.parquet", prompt_set=PROMPT_SETS),
    output:
        expand("results/images/{{model}}/{prompt_set}/manifest.parquet", prompt_set=PROMPT_SETS),
    params:
        device=DEVICE,
        cfg=as_json(sampling_config()),
        model=model_path,
        base=BASE["path"],
    conda:
        "../environment.yml"
    benchmark:
        "results/benchmarks/generate/{model}.tsv"
    log:
        "results/logs/generate/{model}.log",
    shell:
        "dspo generate --params {params.cfg:q} --model {params.model:q} --base {params.base:q}"
        " --prompts {input.prompts:q} --out {output:q} --threads {threads} --device {params.device:q}"
        " > {log:q} 2>&1"


if EDITING:

    rule edit:
        input:
            model=model_input,
            editing="results/data/editing.parquet",
        output:
            "results/images/{model}/editing/manifest.parquet",
        params:
            device=DEVICE,
            cfg=as_json(editing_config()),
            model=model_path,
            base=BASE["path"],
        conda:
            "../environment.yml"
        benchmark:
            "results/benchmarks/edit/{model}.tsv"
        log:
            "results/logs/edit/{model}.log",
        shell:
            "dspo edit --params {params.cfg:q} --model {params.model:q} --base {params.base:q}"
            " --editing-set {input.editing:q} --out {output:q} --threads {threads} --device {params.device:q}"
            " > {log:q} 2>&1"
