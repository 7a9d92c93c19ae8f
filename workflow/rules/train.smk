# Training and evaluation: one job per run (dataset, model, seed). Training jobs take one GPU each; the trainer
# picks a free GPU slot itself (see resnet_repro.gpu), or uses the CUDA_VISIBLE_DEVICES a scheduler set.

from resnet_repro import paths, sources


wildcard_constraints:
    dataset="[a-z0-9_]+",
    model="[a-z0-9_]+",
    seed="[0-9]+",


rule train:
    input:
        f"{paths.prepared_dir()}/meta.json",
        code=sources.subcommand_files("train"),
    output:
        model=paths.run_file("model.pt"),
        history=paths.run_file("history.csv"),
        epochs=paths.run_file("epochs.csv"),
    log:
        "logs/train/{dataset}/{model}/seed{seed}.log",
    threads: lambda w: stages.train_threads(PLAN, PLAN.run(w.dataset, w.model, w.seed), _cores())
    resources:
        gpu=lambda w: stages.train_resources(PLAN.run(w.dataset, w.model, w.seed))["gpu"],
        runtime=lambda w: stages.train_resources(PLAN.run(w.dataset, w.model, w.seed))["runtime"],
        mem_mb=lambda w: stages.train_resources(PLAN.run(w.dataset, w.model, w.seed))["mem_mb"],
        cpus_per_task=lambda w, threads: threads,
        # On SLURM: SIGTERM 5 minutes before the time limit, so the trainer checkpoints and a retry resumes;
        # append keeps the log of every attempt in one file.
        slurm_extra="--signal=TERM@300 --open-mode=append",
    params:
        stage="train-{dataset}-{model}-seed{seed}",
        # The resolved settings: Snakemake reruns a job whose settings changed in config.yaml.
        settings=lambda w: PLAN.run(w.dataset, w.model, w.seed).settings_json,
    shell:
        "dvc --wait-for-lock repro --single-item {params.stage} > {log} 2>&1"


rule evaluate:
    input:
        paths.run_file("model.pt"),
        paths.run_file("history.csv"),
        paths.run_file("epochs.csv"),
        f"{paths.prepared_dir()}/meta.json",
        code=sources.subcommand_files("evaluate"),
    output:
        paths.run_file(paths.METRICS_FILE),
        paths.run_file(paths.DETAILS_FILE),
    log:
        "logs/evaluate/{dataset}/{model}/seed{seed}.log",
    threads: 1
    params:
        stage="evaluate-{dataset}-{model}-seed{seed}",
    shell:
        "dvc --wait-for-lock repro --single-item {params.stage} > {log} 2>&1"
