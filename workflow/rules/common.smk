# Helpers shared by the rule files (kept apart from the rules, as Snakemake's style guide asks).

import os

from snakemake.exceptions import WorkflowError

from resnet_repro import gpu as _gpu
from resnet_repro import resources as _resources
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
    """Resources of an ImageNet training job (see resnet_repro.resources.imagenet_resources)."""
    return _resources.imagenet_resources(PLAN.run("imagenet", wildcards.model, wildcards.seed))


# Several small runs per GPU (config gpu_runs_per_device): locally only, where `--resources gpu=N` also bounds the
# derived gpu_slots resource to N x runs per GPU (resnet_repro.resources.job_resources). The jobs learn the runs
# per GPU from the environment they inherit: not part of any command, so changing it reruns nothing.
_GPU_RUNS = _resources.setup_snakemake(workflow, config, local=_cores() is not None)
os.environ[_gpu.RUNS_PER_DEVICE_ENV] = str(_GPU_RUNS)


def _gpu_resources(gpus, packable=True):
    """gpu and gpu_slots of a job needing `gpus` GPUs (packable: a small CIFAR job that may share one)."""
    return _resources.job_resources(gpus, _GPU_RUNS, packable)


def _train_gpu(wildcards):
    """gpu and gpu_slots of a CIFAR training job."""
    run = PLAN.run(wildcards.dataset, wildcards.model, wildcards.seed)
    return _gpu_resources(_resources.train_resources(run)["gpu"])
