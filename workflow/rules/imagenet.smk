# ImageNet: an index of the local copy instead of fetch/prepare, and data-parallel training (torchrun) that takes
# all the GPUs of its experiment's `distributed` block in one job (locally: `--resources gpu=N` counts them; on
# SLURM: one job, several nodes with one srun task each). Stage commands come from resnet_repro.stages.

from resnet_repro import paths, sources


# The generic rules could also produce these files; these are the ones that apply to dataset imagenet.
ruleorder: index_imagenet > prepare
ruleorder: train_imagenet > train
ruleorder: evaluate_imagenet > evaluate


rule index_imagenet:
    input:
        code=sources.subcommand_files("index-imagenet"),
    output:
        multiext(f"{paths.prepared_dir('imagenet')}/", *paths.INDEX_FILES),
    log:
        "logs/prepare/imagenet.log",
    threads: 4
    resources:
        runtime=60,
        mem_mb=4000,
    params:
        stage="index-imagenet",
        path=config["datasets"].get("imagenet", {}).get("path") if config.get("datasets") else None,
    shell:
        "dvc --wait-for-lock repro --single-item {params.stage} > {log} 2>&1"


rule train_imagenet:
    input:
        f"{paths.prepared_dir('imagenet')}/meta.json",
        code=sources.subcommand_files("launch", "train-imagenet"),
    output:
        model=paths.run_file(paths.MODEL_FILE, dataset="imagenet"),
        history=paths.run_file(paths.HISTORY_FILE, dataset="imagenet"),
        epochs=paths.run_file(paths.EPOCHS_FILE, dataset="imagenet"),
    log:
        "logs/train/imagenet/{model}/seed{seed}.log",
    threads: lambda w: _imagenet_resources(w)["cpus_per_task"]
    resources:
        gpu=lambda w: _imagenet_resources(w)["gpu"],
        gpu_slots=lambda w: _gpu_resources(_imagenet_resources(w)["gpu"], packable=False)[_resources.SLOTS_RESOURCE],
        runtime=lambda w: _imagenet_resources(w)["runtime"],
        mem_mb=lambda w: _imagenet_resources(w)["mem_mb"],
        cpus_per_task=lambda w: _imagenet_resources(w)["cpus_per_task"],
        nodes=lambda w: _imagenet_resources(w)["nodes"],
        mpi=lambda w: _imagenet_resources(w)["mpi"],
        tasks=lambda w: _imagenet_resources(w)["tasks"],
        tasks_per_gpu=lambda w: _imagenet_resources(w)["tasks_per_gpu"],
        slurm_extra=lambda w: _imagenet_resources(w)["slurm_extra"],
    params:
        stage="train-imagenet-{model}-seed{seed}",
        # What the run computes, without its process layout: more or fewer GPUs retrain nothing (see the train rule).
        settings=lambda w: PLAN.run("imagenet", w.model, w.seed).result_json(),
    shell:
        "dvc --wait-for-lock repro --single-item {params.stage} > {log} 2>&1"


rule evaluate_imagenet:
    input:
        paths.run_file(paths.MODEL_FILE, dataset="imagenet"),
        paths.run_file(paths.HISTORY_FILE, dataset="imagenet"),
        paths.run_file(paths.EPOCHS_FILE, dataset="imagenet"),
        f"{paths.prepared_dir('imagenet')}/meta.json",
        code=sources.subcommand_files("evaluate-imagenet"),
    output:
        paths.run_file(paths.METRICS_FILE, dataset="imagenet"),
        paths.run_file(paths.DETAILS_FILE, dataset="imagenet"),
    log:
        "logs/evaluate/imagenet/{model}/seed{seed}.log",
    threads: 4
    resources:
        gpu=lambda w: (0 if PLAN.run("imagenet", w.model, w.seed).distributed.device == "cpu" else 1),
        gpu_slots=lambda w: _gpu_resources(
            0 if PLAN.run("imagenet", w.model, w.seed).distributed.device == "cpu" else 1, packable=False
        )[_resources.SLOTS_RESOURCE],
        runtime=120,
    params:
        stage="evaluate-imagenet-{model}-seed{seed}",
    shell:
        "dvc --wait-for-lock repro --single-item {params.stage} > {log} 2>&1"


# `snakemake imagenet`, `snakemake imagenet_table3`: every run of one enabled ImageNet experiment, rendered.
for _experiment in [n for n in PLAN.experiments if config["experiments"][n]["dataset"] == plan.IMAGENET]:

    rule:
        name:
            _experiment
        input:
            final_targets(PLAN, [_experiment], summary=False),
