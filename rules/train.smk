rule train:
    input:
        cache=method_cache,
        base=base_model_input,
    output:
        directory("results/models/{method}"),
    params:
        device=DEVICE,
        cfg=lambda wc: as_json(method_config(wc.method)),
        base=BASE["path"],
        run_dir="results/train/{method}",
        launch=train_launcher,
    priority: TRAINING_CHAIN_PRIORITY
    conda:
        "../environment.yml"
    benchmark:
        "results/benchmarks/train/{method}.tsv"
    log:
        "results/logs/train/{method}.log",
    shell:
        # exec: the trainer replaces the job's shell, so a signal meant for it (SLURM's
        # --signal, preemption) does not end that shell and the job before the checkpoint.
        "exec env {params.launch} train --params {params.cfg:q} --cache {input.cache:q}"
        " --base {params.base:q} --out {output:q} --run-dir {params.run_dir:q}"
        " --threads {threads} --device {params.device:q} > {log:q} 2>&1"
