rule generate:
    wildcard_constraints:
        prompt_set="|".join(PROMPT_SETS),
    input:
        model=model_input,
        prompts="results/data/prompts/{prompt_set}.parquet",
    output:
        "results/images/{model}/{prompt_set}/manifest.parquet",
    params:
        device=DEVICE,
        cfg=as_json(sampling_config()),
        model=model_path,
        base=BASE["path"],
    conda:
        "../environment.yml"
    benchmark:
        "results/benchmarks/generate/{model}.{prompt_set}.tsv"
    log:
        "results/logs/generate/{model}/{prompt_set}.log",
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
