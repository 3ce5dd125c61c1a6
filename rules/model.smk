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


# A trained model's kept step (training.evaluate_steps), once its run has finished: put where
# the model `<model>@<step>` is sampled and scored from (dspo/training/step_models.py).
rule step_model:
    input:
        lambda wc: f"results/models/{STEP_MODELS[wc.model][0]}",
    output:
        directory("results/models/{model}"),
    wildcard_constraints:
        model=one_of(STEP_MODELS) if STEP_MODELS else "(?!)",
    params:
        run_dir=lambda wc: f"results/train/{STEP_MODELS[wc.model][0]}",
        step=lambda wc: STEP_MODELS[wc.model][1],
    conda:
        "../environment.yml"
    log:
        "results/logs/step_model/{model}.log",
    shell:
        "dspo step-model --run-dir {params.run_dir:q} --at-step {params.step} --out {output:q}"
        " > {log:q} 2>&1"
