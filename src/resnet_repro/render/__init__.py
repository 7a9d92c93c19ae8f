"""The pipeline's last stages: figures, tables and the reproduction verdict, from the runs' files alone.

Inputs are what training and evaluation write (history.csv, epochs.csv, metrics.json per run, responses.json for
Fig. 7) and the reference numbers in references.yaml; outputs go to results/<experiment>/{figures,tables}/ and
results/summary/. A run that has not happened is drawn as absent, shown as "not run" in tables and never counts as
a reproduced claim; nor does a claim whose noise cannot be computed ("undetermined"). Where each file goes is
resnet_repro.paths'. One module per job, each importing only the ones above it:

    references   the published numbers (references.yaml) and how to cite them
    names        the papers' names and kinds of catalogue models
    results      loading finished runs into per-model groups with their statistics
    statistics   the noise of a difference of means, its p-value, and Holm's family-wise thresholds
    claims       claims of the paper and the review, and their verdicts
    formats      a table as data, and its CSV, Markdown, LaTeX and HTML files
    tables       the tables each experiment shows, built from results and references
    figures      the figures (matplotlib, imported only when drawing)
    experiments  the registry: what each experiment renders and which claims it judges (else: generic ones)
    outputs      the DAG's view: which files each experiment renders, the render stages, the report's items
    report       rendering an experiment or the summary verdict to files

Nothing here imports torch, pandas or (at module level) matplotlib: the Snakefile imports `outputs` on every dry
run, and `resnet-repro --help` must stay fast. This file imports nothing: use the job modules.
"""
