# Rendering: Fig. 7's layer responses, each experiment's figures/tables/verdict, and the summary verdict.
# Thin rules: stage names, inputs and outputs come from resnet_repro.render.outputs.render_stages (the same stages
# dvc.yaml holds), and each job runs its stage through DVC like every other rule. Expects PLAN from the
# Snakefile, and _flag and _outputs from common.smk. Figures (PNG) and tables (HTML) are flagged for
# `snakemake --report`, grouped by experiment.

from resnet_repro import paths, sources


report: "../report/workflow.rst"


_RENDER_STAGES = _outputs.render_stages(PLAN)


rule responses:
    input:
        model=paths.run_file(paths.MODEL_FILE),
        data=f"{paths.prepared_dir()}/meta.json",
        code=sources.subcommand_files("responses"),
    output:
        paths.run_file(paths.RESPONSES_FILE),
    log:
        "logs/responses/{dataset}/{model}/seed{seed}.log",
    threads: 1
    resources:
        gpu=_gpu_resources(1)["gpu"],
        gpu_slots=_gpu_resources(1)[_resources.SLOTS_RESOURCE],
    params:
        stage="responses-{dataset}-{model}-seed{seed}",
    shell:
        "dvc --wait-for-lock repro --single-item {params.stage} > {log} 2>&1"


for _experiment in PLAN.experiments:
    _stage = _outputs.stage_name("render", _experiment)

    rule:
        name:
            f"render_{_experiment}"
        input:
            _RENDER_STAGES[_stage]["deps"],
            code=sources.subcommand_files("render"),
        output:
            [_flag(path) for path in _RENDER_STAGES[_stage]["outs"]],
        log:
            f"logs/render/{_experiment}.log",
        container:
            RENDER_IMAGE
        threads: 1
        params:
            stage=_stage,  # bound now: a loop variable in shell: would bind late
        shell:
            "dvc --wait-for-lock repro --single-item {params.stage} > {log} 2>&1"


rule render_summary:
    input:
        _RENDER_STAGES["summary"]["deps"],
        code=sources.subcommand_files("summary"),
    output:
        [_flag(path) for path in _RENDER_STAGES["summary"]["outs"]],
    log:
        "logs/render/summary.log",
    container:
        RENDER_IMAGE
    threads: 1
    params:
        stage="summary",
    shell:
        "dvc --wait-for-lock repro --single-item {params.stage} > {log} 2>&1"
