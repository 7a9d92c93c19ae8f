# resnet-repro: the whole reproduction as one DAG. Every job runs its stage through DVC
# (`dvc repro --single-item`), so `snakemake` and `dvc repro` share one set of stages, outputs and lock file.
#
#   snakemake all --cores 8 --resources gpu=2     # everything enabled in config.yaml (`all` is the default)
#   snakemake demo --cores 2                      # the offline demo on the bundled digits
#
# The experiment matrix lives in config.yaml; its runs and settings come from resnet_repro.plan, the stage
# commands from resnet_repro.stages and the file paths from resnet_repro.paths.

import sys
from pathlib import Path

from snakemake.utils import min_version

try:
    import resnet_repro
except ModuleNotFoundError as missing:  # not installed (e.g. `snakemake --lint` with only Snakemake): the checkout's
    if missing.name != "resnet_repro":
        raise
    sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from resnet_repro import plan, stages
from resnet_repro.errors import ReproError
from resnet_repro.render.outputs import final_targets

min_version("9.0")


configfile: "config.yaml"


try:
    # A local image folder missing here is left to the jobs that need it (a missing input), not a stop for all.
    PLAN = plan.build_plan(plan.validated(config), check_data=False)
    stages.sync_dvc_yaml(PLAN)
    # Every run's settings.json, the file its training job reads: rewritten here only where it changed, so it is
    # current before any job starts and no file time says more than its content.
    plan.write_specs(PLAN)
except ReproError as error:
    raise SystemExit(f"error: {error}")


# With `--sdm apptainer` every step runs in its pinned image (containers/); without it, natively.
TRAIN_IMAGE = stages.container_image("train")
RENDER_IMAGE = stages.container_image("render")


container: TRAIN_IMAGE


# What each aggregate target renders; after all of it, DVC records the plan (the plan rule, train.smk), and the
# flag says so. Committed with the results (a clone's plan is DVC's, in dvc.lock), so `--touch` after a pull
# marks it current like them.
FINAL = {
    "all": final_targets(PLAN, PLAN.default_experiments),
    "demo": final_targets(PLAN, ["demo"], summary=False),
}
PLAN_RECORDED = "results/plan/{target}.done"


rule all:
    default_target: True
    input:
        FINAL["all"],
        PLAN_RECORDED.format(target="all"),


rule demo:
    input:
        FINAL["demo"],
        PLAN_RECORDED.format(target="demo"),


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/imagenet.smk"
include: "workflow/rules/render.smk"
