if BUILD_TOY_BASE:

    rule base_model:
        output:
            directory(BASE["path"]),
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
            "dspo pretrain-base --world {params.world:q} --params {params.model:q} --out {output:q}"
            " --metrics results/train/base/metrics.jsonl --threads {threads} > {log:q} 2>&1"
