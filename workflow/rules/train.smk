# Training and evaluation: one job per run (dataset, model, seed). Each takes one GPU (or, with gpu_runs_per_device,
# one slot of a shared GPU); the job picks a free GPU slot itself (see resnet_repro.gpu). And DVC's record of the
# plan the Snakefile wrote.

from resnet_repro import paths, sources


# DVC's `plan` stage (the step the Snakefile takes as it parses: each run's settings.json, rewritten only where it
# changed), so that DVC records it too: after every job of the target, not before. DVC locks the settings files
# while the stage runs, and the training stages read them; and a job upstream of every training would rerun them
# all whenever it reran (or, its output marked ancient, hide their own reasons to rerun: Snakemake masks the jobs
# below one that must run).
rule plan:
    input:
        lambda w: FINAL[w.target],
        "config.yaml",
        stages.REPO_SCHEDULES,
        code=sources.subcommand_files("plan"),
    output:
        touch(PLAN_RECORDED),
    log:
        "logs/plan/{target}.log",
    wildcard_constraints:
        target="|".join(FINAL),
    localrule: True
    params:
        stage=stages.PLAN_STAGE,
    shell:
        "dvc --wait-for-lock repro --single-item {params.stage} > {log} 2>&1"


wildcard_constraints:
    dataset="[a-z0-9_]+",
    model="[a-z0-9_]+",
    seed="[0-9]+",


# A training job reads its run's settings.json, which the Snakefile keeps current (see there); a changed setting
# reruns the run through `params.settings`.
rule train:
    input:
        f"{paths.prepared_dir()}/meta.json",
        code=sources.subcommand_files("train"),
    output:
        model=paths.run_file(paths.MODEL_FILE),
        history=paths.run_file(paths.HISTORY_FILE),
        epochs=paths.run_file(paths.EPOCHS_FILE),
    log:
        "logs/train/{dataset}/{model}/seed{seed}.log",
    threads: lambda w: _resources.train_threads(PLAN, PLAN.run(w.dataset, w.model, w.seed), _cores())
    resources:
        gpu=lambda w: _train_gpu(w)["gpu"],
        gpu_slots=lambda w: _train_gpu(w)[_resources.SLOTS_RESOURCE],
        runtime=lambda w: _resources.train_resources(PLAN.run(w.dataset, w.model, w.seed))["runtime"],
        mem_mb=lambda w: _resources.train_resources(PLAN.run(w.dataset, w.model, w.seed))["mem_mb"],
        cpus_per_task=lambda w, threads: threads,
        # On SLURM: a checkpoint before the time limit, and every attempt's log in one file.
        slurm_extra=_resources.SLURM_TRAIN_EXTRA,
    params:
        stage="train-{dataset}-{model}-seed{seed}",
        # What the run computes (settings.json's result keys): Snakemake reruns a job whose settings changed.
        settings=lambda w: PLAN.run(w.dataset, w.model, w.seed).result_json(),
    shell:
        "dvc --wait-for-lock repro --single-item {params.stage} > {log} 2>&1"


rule evaluate:
    input:
        paths.run_file(paths.MODEL_FILE),
        paths.run_file(paths.HISTORY_FILE),
        paths.run_file(paths.EPOCHS_FILE),
        f"{paths.prepared_dir()}/meta.json",
        code=sources.subcommand_files("evaluate"),
    output:
        paths.run_file(paths.METRICS_FILE),
        paths.run_file(paths.DETAILS_FILE),
    log:
        "logs/evaluate/{dataset}/{model}/seed{seed}.log",
    threads: 1
    resources:
        # a GPU slot like training (the job takes one where there is a GPU; see resnet_repro.gpu)
        gpu=_gpu_resources(1)["gpu"],
        gpu_slots=_gpu_resources(1)[_resources.SLOTS_RESOURCE],
    params:
        stage="evaluate-{dataset}-{model}-seed{seed}",
    shell:
        "dvc --wait-for-lock repro --single-item {params.stage} > {log} 2>&1"
