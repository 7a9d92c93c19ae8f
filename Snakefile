# resnet-repro: the whole reproduction as one DAG. Every job runs its stage through DVC
# (`dvc repro --single-item`), so `snakemake` and `dvc repro` share one set of stages, outputs and lock file.
#
#   snakemake all --cores 8 --resources gpu=2     # everything enabled in config.yaml (`all` is the default)
#   snakemake demo --cores 2                      # the offline demo on the bundled digits
#
# The experiment matrix lives in config.yaml; the stage commands, paths and settings in resnet_repro.pipeline.

from snakemake.utils import min_version

from resnet_repro import pipeline
from resnet_repro.errors import ReproError
from resnet_repro.render.outputs import final_targets

min_version("9.0")


configfile: "config.yaml"


try:
    # A local image folder missing here is left to the jobs that need it (a missing input), not a stop for all.
    PLAN = pipeline.build_plan(pipeline.validated(config), check_data=False)
    pipeline.sync_dvc_yaml(PLAN)
except ReproError as error:
    raise SystemExit(f"error: {error}")

# With `--sdm apptainer` every step runs in its pinned image (containers/); without it, natively.
TRAIN_IMAGE = pipeline.container_image("train")
RENDER_IMAGE = pipeline.container_image("render")


container: TRAIN_IMAGE


rule all:
    input:
        final_targets(PLAN, PLAN.default_experiments),
    default_target: True


rule demo:
    input:
        final_targets(PLAN, ["demo"], summary=False),


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/imagenet.smk"
include: "workflow/rules/render.smk"
