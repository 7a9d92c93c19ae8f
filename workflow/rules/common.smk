# Helpers shared by the rule files (kept apart from the rules, as Snakemake's style guide asks).

from snakemake.exceptions import WorkflowError

from resnet_repro.render import outputs as _outputs

_REPORT = {item.path: item for item in _outputs.report_items(PLAN) + _outputs.summary_report_items()}


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


def _cores():
    """The cores of a local run (--cores N); None under a cluster executor, where each job asks for its own."""
    try:
        return workflow.cores
    except WorkflowError:
        return None


def _imagenet_resources(wildcards):
    """Resources of an ImageNet training job (see resnet_repro.stages.imagenet_resources)."""
    return stages.imagenet_resources(PLAN.run("imagenet", wildcards.model, wildcards.seed))
