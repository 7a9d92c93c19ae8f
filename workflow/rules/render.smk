# Rendering: Fig. 7's layer responses, each experiment's figures/tables/verdict, and the summary verdict.
# Thin rules: stage names, inputs and outputs come from resnet_repro.render.render_stages (the same stages
# dvc.yaml holds), and each job runs its stage through DVC like every other rule. Expects PLAN and DVC from
# the Snakefile. Figures (PNG) and tables (HTML) are flagged for `snakemake --report`, grouped by experiment.

from resnet_repro import render as _render


report: "../report/workflow.rst"


_RENDER_STAGES = _render.render_stages(PLAN)
_REPORT = {
    item.path: item for item in _render.report_items(PLAN) + _render.summary_report_items()
}


def _flag(path):
    """A rule output, flagged for the HTML report when it is a figure or table people look at."""
    item = _REPORT.get(path)
    if item is None:
        return path
    return report(
        path,
        caption=f"../report/{item.caption}.rst",
        category=item.category,
        subcategory=item.subcategory,
        labels={"name": item.label, "file": path.rsplit("/", 1)[-1]},
    )


rule responses:
    input:
        model="results/{dataset}/{model}/seed{seed}/model.pt",
        data="data/prepared/{dataset}/meta.json",
    output:
        _render.RESPONSES_PATTERN,
    params:
        stage="responses-{dataset}-{model}-seed{seed}",
    log:
        "logs/responses/{dataset}/{model}/seed{seed}.log",
    threads: 1
    shell:
        "{DVC} {params.stage} > {log} 2>&1"


for _experiment in PLAN.experiments:
    _stage = _render.stage_name("render", _experiment)

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
        threads: 1
        shell:
            "{DVC} {params.stage} > {log} 2>&1"


rule render_summary:
    input:
        _RENDER_STAGES["summary"]["deps"],
    output:
        [_flag(path) for path in _RENDER_STAGES["summary"]["outs"]],
    params:
        stage="summary",
    log:
        "logs/render/summary.log",
    threads: 1
    shell:
        "{DVC} {params.stage} > {log} 2>&1"
