# A method's frozen reference, precomputed along its batches (training.precompute_reference),
# scattered over reference.shards jobs of contiguous steps.
rule reference_part:
    input:
        cache=method_cache,
        base=base_model_input,
    output:
        temp(directory("results/reference/{method}.parts/{part}")),
    log:
        "results/logs/reference/{method}.part{part}.log",
    wildcard_constraints:
        part=r"\d+",
    priority: TRAINING_CHAIN_PRIORITY
    conda:
        "../environment.yml"
    params:
        device=DEVICE,
        cfg=lambda wc: as_json(reference_config(wc.method)),
        base=BASE["path"],
    shell:
        "dspo reference-part --part {wildcards.part} --params {params.cfg:q} --cache {input.cache:q}"
        " --base {params.base:q} --out {output:q} --threads {threads} --device {params.device:q}"
        " > {log:q} 2>&1"


rule reference:
    input:
        parts=reference_parts,
    output:
        directory("results/reference/{method}"),
    log:
        "results/logs/reference/{method}.log",
    priority: TRAINING_CHAIN_PRIORITY
    conda:
        "../environment.yml"
    params:
        cfg=lambda wc: as_json(reference_config(wc.method)),
    shell:
        "dspo reference-gather --inputs {input.parts:q} --out {output:q} > {log:q} 2>&1"


rule train:
    input:
        cache=method_cache,
        base=base_model_input,
        reference=reference_input,
        previous=previous_round_input,
        validation_prompts=validation_prompts_input,
    output:
        directory("results/models/{method}"),
    log:
        "results/logs/train/{method}.log",
    benchmark:
        "results/benchmarks/train/{method}.tsv"
    priority: TRAINING_CHAIN_PRIORITY
    conda:
        "../environment.yml"
    params:
        device=DEVICE,
        cfg=lambda wc: as_json(method_config(wc.method)),
        base=train_base,
        run_dir="results/train/{method}",
        launch=train_launcher,
        reference=reference_option,
        validation_prompts=validation_prompts_option,
    shell:
        # exec: the launcher replaces the job's shell, so a signal meant for the trainers
        # (SLURM's --signal, preemption) does not end that shell and the job before their
        # checkpoint; the launcher forwards it to every trainer and waits for them.
        "exec env {params.launch} train --params {params.cfg:q} --cache {input.cache:q}"
        " --base {params.base:q} --out {output:q} --run-dir {params.run_dir:q} {params.reference}"
        " {params.validation_prompts} --threads {threads} --device {params.device:q} > {log:q} 2>&1"
