# Rendering: Fig. 7's layer responses, each experiment's figures/tables/verdict, and the summary verdict.
# Thin rules: stage names, inputs and outputs come from resnet_repro.render.outputs.render_stages (the same stages
# dvc.yaml holds), and each job runs its stage through DVC like every other rule. Expects PLAN from the
# Snakefile, and _flag, _outputs and _paths from common.smk. Figures (PNG) and tables (HTML) are flagged for
# `snakemake --report`, grouped by experiment.


report: "../report/workflow.rst"


_RENDER_STAGES = _outputs.render_stages(PLAN)


rule responses:
    input:
        model="results/{dataset}/{model}/seed{seed}/model.pt",
        data="data/prepared/{dataset}/meta.json",
    output:
        _paths.RESPONSES_PATTERN,
    params:
        stage="responses-{dataset}-{model}-seed{seed}",
    log:
        "logs/responses/{dataset}/{model}/seed{seed}.log",
    threads: 1
    shell:
        "dvc --wait-for-lock repro --single-item {params.stage} > {log} 2>&1"


for _experiment in PLAN.experiments:
    _stage = _paths.stage_name("render", _experiment)

    rule:
        name:
            f"render_{_experiment}"
        input:
            _RENDER_STAGES[_stage]["deps"],
        output:
            [_flag(path) for path in _RENDER_STAGES[_stage]["outs"]],
        params:
            stage=_stage,  # bound now: a loop variable in shell: would bind late
        log:
            f"logs/render/{_experiment}.log",
        container:
            RENDER_IMAGE
        threads: 1
        shell:
            "dvc --wait-for-lock repro --single-item {params.stage} > {log} 2>&1"


rule render_summary:
    input:
        _RENDER_STAGES["summary"]["deps"],
    output:
        [_flag(path) for path in _RENDER_STAGES["summary"]["outs"]],
    params:
        stage="summary",
    log:
        "logs/render/summary.log",
    container:
        RENDER_IMAGE
    threads: 1
    shell:
        "dvc --wait-for-lock repro --single-item {params.stage} > {log} 2>&1"
