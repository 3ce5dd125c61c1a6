# A generated pair source (pairs.source.kind: generated; dspo/data/generated.py): the source's
# prompts, K images of each sampled from a model (the source's model, or a round's previous
# model) over pairs.source.shards part jobs, each part's images scored by the labelling reward
# and paired into Pick-a-Pic rows. Sampling and labelling are separate jobs: a changed
# labelling reward rescores the same images. A part's images are kept, keyed, as they are made,
# so a part killed and run again makes only the images it lacks.
rule generated_prompts:
    input:
        generated_prompts_inputs,
    output:
        GENERATED_PROMPTS,
    log:
        "results/logs/generated/prompts.log",
    conda:
        "../environment.yml"
    params:
        cfg=as_json({"prompts": GENERATED["prompts"]}),
        toy=generated_prompts_options,
    shell:
        "dspo generated-prompts --params {params.cfg:q} {params.toy} --out {output:q}"
        " > {log:q} 2>&1"


rule generated_images:
    input:
        prompts=GENERATED_PROMPTS,
        model=model_input,
        base=base_model_input,
    output:
        "results/data/generated/{model}/images/part{part}/manifest.parquet",
    log:
        "results/logs/generated/{model}/images.part{part}.log",
    benchmark:
        "results/benchmarks/generated_images/{model}.part{part}.tsv"
    wildcard_constraints:
        model=one_of(SAMPLED),
        part=r"\d+",
    priority: TRAINING_CHAIN_PRIORITY
    conda:
        "../environment.yml"
    params:
        device=DEVICE,
        cfg=as_json(generated_images_config()),
        model=model_path,
        base=BASE["path"],
    shell:
        "dspo generated-images --part {wildcards.part} --params {params.cfg:q}"
        " --prompts {input.prompts:q} --model {params.model:q} --base {params.base:q}"
        " --out {output:q} --threads {threads} --device {params.device:q} > {log:q} 2>&1"


rule generated_labels:
    input:
        manifest="results/data/generated/{model}/images/part{part}/manifest.parquet",
        fetched=rewards_input,
    output:
        "results/data/generated/{model}/labels/part{part}.parquet",
    log:
        "results/logs/generated/{model}/labels.part{part}.log",
    benchmark:
        "results/benchmarks/generated_labels/{model}.part{part}.tsv"
    wildcard_constraints:
        model=one_of(SAMPLED),
        part=r"\d+",
    priority: TRAINING_CHAIN_PRIORITY
    conda:
        "../environment.yml"
    params:
        device=DEVICE,
        cfg=as_json(generated_labels_config()),
        rewards=as_json(generated_rewards()),
    shell:
        "dspo generated-labels --params {params.cfg:q} --rewards {params.rewards:q}"
        " --manifest {input.manifest:q} --out {output:q} --threads {threads}"
        " --device {params.device:q} > {log:q} 2>&1"


# A later round's pairs: the previous round's labelled parts, normalised as the pairs are.
rule generated_pairs_part:
    input:
        source=lambda wc: generated_label_parts(wc.sampled),
        exclude=excluded_prompt_tables,
    output:
        temp(directory("results/data/generated_{sampled}.parts/{part}")),
    log:
        "results/logs/generated/{sampled}/pairs.part{part}.log",
    wildcard_constraints:
        sampled=one_of(ROUND_SOURCES) or "(?!)",
        part=r"\d+",
    priority: TRAINING_CHAIN_PRIORITY
    conda:
        "../environment.yml"
    params:
        cfg=lambda wc: as_json(round_pairs_config(wc.sampled)),
        source=lambda wc: generated_labels_dir(wc.sampled),
    shell:
        "dspo pairs-part --part {wildcards.part} --params {params.cfg:q} --input {params.source:q}"
        " --exclude {input.exclude:q} --out {output:q} > {log:q} 2>&1"


rule generated_pairs:
    input:
        generated_pairs_parts,
    output:
        pairs="results/data/generated_{sampled}.parquet",
        report="results/data/generated_{sampled}_report.json",
    log:
        "results/logs/generated/{sampled}/pairs.log",
    wildcard_constraints:
        sampled=one_of(ROUND_SOURCES) or "(?!)",
    priority: TRAINING_CHAIN_PRIORITY
    conda:
        "../environment.yml"
    params:
        cfg=lambda wc: as_json(round_pairs_config(wc.sampled)),
    shell:
        "dspo pairs-gather --inputs {input:q} --out {output.pairs:q} --report {output.report:q}"
        " > {log:q} 2>&1"
