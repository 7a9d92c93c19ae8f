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
    missing = {
        "sources",
        "table6",
        "table2",
        "review_fc",
        "cifar100_reference",
        "tolerances",
        "deviations",
        "regimes",
    } - set(refs or {})
    if missing:
        raise DataError(f"{path}: missing sections {sorted(missing)}")
    return refs


def cite(refs: dict, section: str) -> str:
    return cite_entry(refs, refs[section])


def cite_entry(refs: dict, entry: dict) -> str:
    """An entry's source and where in it: `entry` holds `source` (a key of `sources`) and `where`."""
    return f"{refs['sources'][entry['source']]['citation']}, {entry['where']}"


def deviation_note(refs: dict, key: str) -> str:
    """One deviation from the paper (references.yaml `deviations`), as a table note: what, expected effect, source."""
    entry = refs["deviations"][key]
    return f"Deviation: {entry['what']}. Expected effect: {entry['effect']} ({cite_entry(refs, entry)})."
