# Download and preparation. Paths and commands come from resnet_repro.stages (the DVC stages).

from resnet_repro import paths, sources


rule fetch:
    input:
        code=sources.subcommand_files("fetch"),
    output:
        paths.raw_archive(),
    log:
        "logs/fetch/{archive}.log",
    wildcard_constraints:
        archive="cifar-10-python.tar.gz|cifar-100-python.tar.gz",
    resources:
        runtime=30,
    params:
        stage=lambda w: f"fetch-{stages.archive_dataset(w.archive)}",
    shell:
        "dvc --wait-for-lock repro --single-item {params.stage} > {log} 2>&1"


rule prepare:
    input:
        lambda w: stages.prepare_inputs(w.dataset, config),
        code=sources.subcommand_files("prepare"),
    output:
        # The files, not the folder: a directory output would get a Snakemake timestamp file inside, which
        # would change the folder's DVC hash.
        multiext(f"{paths.prepared_dir()}/", *paths.PREPARED_FILES),
    log:
        "logs/prepare/{dataset}.log",
    resources:
        runtime=30,
        mem_mb=8000,
    params:
        stage="prepare-{dataset}",
    shell:
        "dvc --wait-for-lock repro --single-item {params.stage} > {log} 2>&1"
