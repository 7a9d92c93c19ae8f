# Training and evaluation: one job per run (dataset, model, seed). Training jobs take one GPU each; the trainer
# picks a free GPU slot itself (see resnet_repro.gpu), or uses the CUDA_VISIBLE_DEVICES a scheduler set.


wildcard_constraints:
    dataset="[a-z0-9_]+",
    model="[a-z0-9_]+",
    seed="[0-9]+",


rule train:
    input:
        "data/prepared/{dataset}/meta.json",
    output:
        model="results/{dataset}/{model}/seed{seed}/model.pt",
        history="results/{dataset}/{model}/seed{seed}/history.csv",
        epochs="results/{dataset}/{model}/seed{seed}/epochs.csv",
    params:
        stage="train-{dataset}-{model}-seed{seed}",
        # The resolved settings: Snakemake reruns a job whose settings changed in config.yaml.
        settings=lambda w: PLAN.run(w.dataset, w.model, w.seed).settings_json,
    log:
        "logs/train/{dataset}/{model}/seed{seed}.log",
    threads: 2
    resources:
        gpu=lambda w: pipeline.train_resources(PLAN.run(w.dataset, w.model, w.seed))["gpu"],
        runtime=lambda w: pipeline.train_resources(PLAN.run(w.dataset, w.model, w.seed))["runtime"],
        mem_mb=lambda w: pipeline.train_resources(PLAN.run(w.dataset, w.model, w.seed))["mem_mb"],
        cpus_per_task=2,
        # On SLURM: SIGTERM 5 minutes before the time limit, so the trainer checkpoints and a retry resumes;
        # append keeps the log of every attempt in one file.
        slurm_extra="--signal=TERM@300 --open-mode=append",
    shell:
        "dvc --wait-for-lock repro --single-item {params.stage} > {log} 2>&1"


rule evaluate:
    input:
        "results/{dataset}/{model}/seed{seed}/model.pt",
        "results/{dataset}/{model}/seed{seed}/history.csv",
        "results/{dataset}/{model}/seed{seed}/epochs.csv",
        "data/prepared/{dataset}/meta.json",
    output:
        "results/{dataset}/{model}/seed{seed}/metrics.json",
    params:
        stage="evaluate-{dataset}-{model}-seed{seed}",
    log:
        "logs/evaluate/{dataset}/{model}/seed{seed}.log",
    threads: 1
    shell:
        "dvc --wait-for-lock repro --single-item {params.stage} > {log} 2>&1"
