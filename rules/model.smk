if BUILD_TOY_BASE:

    rule base_model:
        output:
            model=directory(BASE["path"]),
            metrics="results/train/base/metrics.jsonl",
        params:
            world=as_json(config.get("world", {})),
            model=as_json({k: BASE[k] for k in ("architecture", "pretrain")}),
        conda:
            "../environment.yml"
        benchmark:
            "results/benchmarks/base_model/job.tsv"
        log:
            "results/logs/base_model.log",
        threads: 2
        shell:
            "dspo pretrain-base --world {params.world:q} --params {params.model:q}"
            " --out {output.model:q} --metrics {output.metrics:q} --threads {threads}"
            " > {log:q} 2>&1"


# A method entry naming an existing model (`methods.<name>.model`) is imported where a trained
# model would be saved, with no training: generate, score and the tables read it from there.
# A denoiser-only folder is combined with the base pipeline's other parts (dspo/hub/released.py).
rule import_model:
    input:
        model=released_input,
        base=base_model_input,
    output:
        directory("results/models/{model}"),
    wildcard_constraints:
        model=one_of(RELEASED) if RELEASED else "(?!)",
    params:
        source=lambda wc: RELEASED[wc.model],
        base=BASE["path"],
    conda:
        "../environment.yml"
    log:
        "results/logs/import_model/{model}.log",
    shell:
        "dspo import-model --model {params.source:q} --base {params.base:q} --out {output:q}"
        " > {log:q} 2>&1"
