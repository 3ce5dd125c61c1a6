# Downloads of the hub artefacts the config names (dspo/hub/fetch.py), one localrule per artefact:
# they run in the Snakemake process on the login node, where the network is; every other job
# runs with HF_HUB_OFFLINE=1 (Snakefile) and waits for the records of what it reads.


rule fetch_item:
    output:
        "results/fetch/items/{item}.json",
    log:
        "results/logs/fetch/{item}.log",
    conda:
        "../environment.yml"
    params:
        spec=lambda wc: as_json(FETCH_ITEMS[wc.item]),
    shell:
        "env HF_HUB_OFFLINE=0 dspo fetch --item {params.spec:q} --out {output:q} > {log:q} 2>&1"


# `snakemake fetch`: every download, and results/fetch/manifest.json (repo, commit, file,
# size, SHA-256 of each file).
rule fetch:
    input:
        expand("results/fetch/items/{item}.json", item=FETCH_ITEMS),
    output:
        "results/fetch/manifest.json",
    log:
        "results/logs/fetch/manifest.log",
    conda:
        "../environment.yml"
    shell:
        "dspo fetch-manifest --inputs {input:q} --out {output:q} > {log:q} 2>&1"
