rule toy_world:
    output:
        pairs=directory("results/data/toy/pairs"),
        prompts="results/data/toy/prompts.parquet",
        editing="results/data/toy/editing.parquet",
        preview=report(
            "results/data/toy/preview.png",
            caption="../workflow/report/preview.rst",
            category="Data",
        ),
    params:
        world=as_json(config.get("world", {})),
        # The folder of the declared outputs, where `dspo toy-world` writes them.
        out=lambda wc, output: os.path.dirname(output.prompts),
    conda:
        "../environment.yml"
    benchmark:
        "results/benchmarks/toy_world/job.tsv"
    log:
        "results/logs/toy_world.log",
    shell:
        "dspo toy-world --params {params.world:q} --out {params.out:q} > {log:q} 2>&1"


# Normalising is scattered over pairs.shards jobs, each screening a contiguous block of the
# source's units into its own folder, and gathered into the canonical table.
rule pairs_part:
    input:
        source=pairs_source_input,
        exclude=excluded_prompt_tables,
    output:
        temp(directory("results/data/pairs.parts/{part}")),
    wildcard_constraints:
        part=r"\d+",
    params:
        cfg=as_json(config["pairs"]),
        source=source_arg(PAIRS_SOURCE, TOY_PAIRS),
    priority: TRAINING_CHAIN_PRIORITY
    conda:
        "../environment.yml"
    benchmark:
        "results/benchmarks/pairs_part/part{part}.tsv"
    log:
        "results/logs/pairs/part{part}.log",
    shell:
        "dspo pairs-part --part {wildcards.part} --params {params.cfg:q} --input {params.source:q}"
        " --exclude {input.exclude:q} --out {output:q} > {log:q} 2>&1"


rule pairs:
    input:
        pairs_parts,
    output:
        pairs="results/data/pairs.parquet",
        report=PAIRS_REPORT,
    params:
        cfg=as_json(config["pairs"]),
    priority: TRAINING_CHAIN_PRIORITY
    conda:
        "../environment.yml"
    benchmark:
        "results/benchmarks/pairs/job.tsv"
    log:
        "results/logs/pairs/gather.log",
    shell:
        "dspo pairs-gather --inputs {input:q} --out {output.pairs:q} --report {output.report:q}"
        " > {log:q} 2>&1"


# The nodup table is scattered the same way, over the row groups of the pair table.
rule pairs_nodup_part:
    input:
        "results/data/pairs.parquet",
    output:
        temp(directory("results/data/pairs_nodup.parts/{part}")),
    wildcard_constraints:
        part=r"\d+",
    params:
        cfg=as_json(NODUP),
    priority: TRAINING_CHAIN_PRIORITY
    conda:
        "../environment.yml"
    benchmark:
        "results/benchmarks/pairs_nodup_part/part{part}.tsv"
    log:
        "results/logs/pairs_nodup/part{part}.log",
    shell:
        "dspo nodup-part --part {wildcards.part} --params {params.cfg:q} --input {input:q}"
        " --out {output:q} > {log:q} 2>&1"


rule pairs_nodup:
    input:
        nodup_parts,
    output:
        pairs="results/data/pairs_nodup.parquet",
        report=NODUP_REPORT,
    params:
        cfg=as_json(NODUP),
    priority: TRAINING_CHAIN_PRIORITY
    conda:
        "../environment.yml"
    benchmark:
        "results/benchmarks/pairs_nodup/job.tsv"
    log:
        "results/logs/pairs_nodup/gather.log",
    shell:
        "dspo nodup-gather --inputs {input:q} --out {output.pairs:q} --report {output.report:q}"
        " > {log:q} 2>&1"


# With ddspo.degrader.kind llm, one job degrades every prompt DDSPO draws with the LLM before
# the parts sample; its answers are cached per prompt (resumable after a kill).
rule ddspo_degrade:
    input:
        pairs="results/data/pairs.parquet",
        model=ddspo_degrader_input,
    output:
        table=DDSPO_DEGRADED,
        report=DDSPO_DEGRADED_REPORT,
    params:
        device=DEVICE,
        cfg=ddspo_settings("prompts", "seed", "degrader"),
        cache=DDSPO_DEGRADER_CACHE,
    priority: TRAINING_CHAIN_PRIORITY
    conda:
        "../environment.yml"
    benchmark:
        "results/benchmarks/ddspo_degrade/job.tsv"
    log:
        "results/logs/ddspo_pairs/degrade.log",
    shell:
        "dspo ddspo-degrade --params {params.cfg:q} --input {input.pairs:q}"
        " --cache {params.cache:q} --out {output.table:q} --report {output.report:q}"
        " --threads {threads} --device {params.device:q} > {log:q} 2>&1"


# DDSPO's pairs are sampled over ddspo.shards jobs, each streaming a contiguous block of the
# sampling batches to disk, and gathered into one table.
rule ddspo_part:
    input:
        pairs="results/data/pairs.parquet",
        base=base_model_input,
        degraded=ddspo_degraded_input,
    output:
        temp(directory("results/data/pairs_ddspo.parts/{part}")),
    wildcard_constraints:
        part=r"\d+",
    params:
        device=DEVICE,
        cfg=ddspo_settings(),
        base=BASE["path"],
        degraded=ddspo_degraded_option,
    priority: TRAINING_CHAIN_PRIORITY
    conda:
        "../environment.yml"
    benchmark:
        "results/benchmarks/ddspo_part/part{part}.tsv"
    log:
        "results/logs/ddspo_pairs/part{part}.log",
    shell:
        "dspo ddspo-part --part {wildcards.part} --params {params.cfg:q} --input {input.pairs:q}"
        " --base {params.base:q} --out {output:q} {params.degraded} --threads {threads}"
        " --device {params.device:q} > {log:q} 2>&1"


rule ddspo_pairs:
    input:
        ddspo_parts,
    output:
        "results/data/pairs_ddspo.parquet",
    params:
        cfg=ddspo_settings(),
        base=BASE["path"],
    priority: TRAINING_CHAIN_PRIORITY
    conda:
        "../environment.yml"
    benchmark:
        "results/benchmarks/ddspo_pairs/job.tsv"
    log:
        "results/logs/ddspo_pairs/gather.log",
    shell:
        "dspo ddspo-gather --inputs {input:q} --out {output:q} > {log:q} 2>&1"


# The cache is scattered over cache.shards jobs, each encoding a contiguous block of the pairs
# into its own folder, and gathered into results/cache/{dataset}. Both rules take the config
# slice and the base model: the parts are temporary, so a changed setting must reach the
# gather job to rebuild them.
rule cache_part:
    input:
        pairs="results/data/{dataset}.parquet",
        base=base_model_input,
    output:
        temp(directory("results/cache/{dataset}.parts/{part}")),
    wildcard_constraints:
        part=r"\d+",
    params:
        device=DEVICE,
        cfg=as_json(config["cache"]),
        base=BASE["path"],
    priority: TRAINING_CHAIN_PRIORITY
    conda:
        "../environment.yml"
    benchmark:
        "results/benchmarks/cache_part/{dataset}.part{part}.tsv"
    log:
        "results/logs/cache/{dataset}.part{part}.log",
    shell:
        "dspo cache-part --part {wildcards.part} --params {params.cfg:q} --input {input.pairs:q}"
        " --base {params.base:q} --out {output:q} --threads {threads} --device {params.device:q}"
        " > {log:q} 2>&1"


rule cache:
    input:
        parts=cache_parts,
        pairs="results/data/{dataset}.parquet",
        base=base_model_input,
    output:
        directory("results/cache/{dataset}"),
    params:
        cfg=as_json(config["cache"]),
        base=BASE["path"],
    priority: TRAINING_CHAIN_PRIORITY
    conda:
        "../environment.yml"
    benchmark:
        "results/benchmarks/cache/{dataset}.tsv"
    log:
        "results/logs/cache/{dataset}.log",
    shell:
        "dspo cache-gather --inputs {input.parts:q} --out {output:q} > {log:q} 2>&1"


rule prompt_set:
    input:
        prompt_source_input,
    output:
        "results/data/prompts/{prompt_set}.parquet",
    params:
        cfg=lambda wc: as_json(SAMPLED_ENTRIES[wc.prompt_set]),
        source=prompt_source_arg,
    conda:
        "../environment.yml"
    benchmark:
        "results/benchmarks/prompt_set/{prompt_set}.tsv"
    log:
        "results/logs/prompts/{prompt_set}.log",
    shell:
        "dspo prompts --name {wildcards.prompt_set} --params {params.cfg:q}"
        " --input {params.source:q} --out {output:q} > {log:q} 2>&1"


if EDITING:

    rule editing_set:
        input:
            editing_source_input,
        output:
            EDITING_TABLE,
        params:
            cfg=as_json(EDITING),
            source=source_arg(EDITING["source"], TOY_EDITING),
        conda:
            "../environment.yml"
        benchmark:
            "results/benchmarks/editing_set/job.tsv"
        log:
            "results/logs/editing_set.log",
        shell:
            "dspo editing-set --params {params.cfg:q} --input {params.source:q} --out {output:q}"
            " > {log:q} 2>&1"
