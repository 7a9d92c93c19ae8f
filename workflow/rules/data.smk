# Download and preparation. Paths and commands come from resnet_repro.stages (the DVC stages).

from resnet_repro import paths


rule fetch:
    output:
        paths.raw_archive(),
    wildcard_constraints:
        archive="cifar-10-python.tar.gz|cifar-100-python.tar.gz",
    params:
        stage=lambda w: f"fetch-{stages.archive_dataset(w.archive)}",
    log:
        "logs/fetch/{archive}.log",
    resources:
        runtime=30,
    shell:
        "dvc --wait-for-lock repro --single-item {params.stage} > {log} 2>&1"


rule prepare:
    input:
        lambda w: stages.prepare_inputs(w.dataset, config),
    output:
        # The files, not the folder: a directory output would get a Snakemake timestamp file inside, which
        # would change the folder's DVC hash.
        multiext(f"{paths.prepared_dir()}/", *paths.PREPARED_FILES),
    params:
        stage="prepare-{dataset}",
    log:
        "logs/prepare/{dataset}.log",
    resources:
        runtime=30,
        mem_mb=8000,
    shell:
        "dvc --wait-for-lock repro --single-item {params.stage} > {log} 2>&1"
