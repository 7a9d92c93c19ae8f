"""The published numbers the runs are compared with (references.yaml), and how to cite them."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import DataError

REFERENCES_FILE = Path(__file__).parent.parent / "references.yaml"
# The file as DVC sees it (a dependency of every render stage), wherever the package is installed.
REPO_REFERENCES = "src/resnet_repro/references.yaml"


def load_references(path: Path | str = REFERENCES_FILE) -> dict:
    path = Path(path)
    try:
        refs = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise DataError(f"{path}: cannot read the reference numbers ({error})") from None
    missing = {"sources", "table6", "table2", "review_fc", "cifar100_reference", "tolerances", "regimes"} - set(
        refs or {}
    )
    if missing:
        raise DataError(f"{path}: missing sections {sorted(missing)}")
    return refs


def cite(refs: dict, section: str) -> str:
    entry = refs[section]
    return f"{refs['sources'][entry['source']]['citation']}, {entry['where']}"
