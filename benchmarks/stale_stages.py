"""How many of dvc.yaml's stages an edit of each module makes stale, from the stages' own deps (what `dvc status`
reports after the edit; tests/test_staleness.py checks the rule against real DVC), here and at a git revision.

    python benchmarks/stale_stages.py                    # the working tree's dvc.yaml
    python benchmarks/stale_stages.py --before 22c5be6   # beside that commit's dvc.yaml
    python benchmarks/stale_stages.py --markdown         # as the Markdown table of docs/staleness-and-sharing.md
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "src/resnet_repro/"


def stale_counts(dvc_yaml: str) -> tuple[int, Counter[str]]:
    """The number of stages, and per source file the number of stages listing it among their deps."""
    stages = yaml.safe_load(dvc_yaml)["stages"]
    counts: Counter[str] = Counter()
    for stage in stages.values():
        counts.update(dep for dep in stage.get("deps", []) if dep.startswith(PACKAGE) and dep.endswith(".py"))
    return len(stages), counts


def git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def modules_at(revision: str | None) -> set[str]:
    """The package's Python files at `revision` (None: in the working tree)."""
    if revision is None:
        return {f"{PACKAGE}{path.relative_to(ROOT / PACKAGE)}" for path in (ROOT / PACKAGE).rglob("*.py")}
    return {name for name in git("ls-tree", "-r", "--name-only", revision, PACKAGE).split() if name.endswith(".py")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dvc-yaml", default=str(ROOT / "dvc.yaml"), help="the stages now (default: the checkout's)")
    parser.add_argument("--before", metavar="REV", help="also count the stages of this revision's dvc.yaml")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    total, now = stale_counts(Path(args.dvc_yaml).read_text())
    columns = [(now, modules_at(None), f"now ({total} stages)")]
    if args.before:
        before_total, before = stale_counts(git("show", f"{args.before}:dvc.yaml"))
        columns.insert(0, (before, modules_at(args.before), f"before ({before_total} stages)"))
    header = ["module", *(title for _, _, title in columns)]
    rows = []
    for module in sorted(set().union(*(files for _, files, _ in columns))):
        # "-": the module did not exist then (split since, or new)
        counts = [str(count.get(module, 0)) if module in files else "-" for count, files, _ in columns]
        rows.append([module.removeprefix(PACKAGE), *counts])
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join([":---", *["---:"] * (len(header) - 1)]) + "|")
        for cells in rows:
            print("| " + " | ".join(cells) + " |")
    else:
        for cells in [header, *rows]:
            print("  ".join(f"{cell:<40}" if i == 0 else f"{cell:>18}" for i, cell in enumerate(cells)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
