"""Write README.md from nbs/index.ipynb (markdown cells as they are, code cells as fenced Python blocks).

nbdev's own `nbdev_readme` needs Quarto, which course machines often lack, so the kit renders the README with
nbconvert instead. `--check` exits with status 1 when README.md differs from what the notebook gives.
"""
import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
HEADER = "<!-- Generated from nbs/index.ipynb by `make readme`: edit the notebook, not this file. -->\n\n"


def render(notebook_path: Path) -> str:
    notebook = nbformat.read(notebook_path, as_version=4)
    parts = []
    for cell in notebook.cells:
        source = cell.source.strip()
        if not source or source.startswith("#|hide"):
            continue
        if cell.cell_type == "markdown":
            parts.append(source)
        elif cell.cell_type == "code":
            lines = [line for line in source.splitlines() if not line.startswith("#|")]
            parts.append("```python\n" + "\n".join(lines) + "\n```")
    return HEADER + "\n\n".join(parts) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when README.md is stale")
    args = parser.parse_args()
    text = render(ROOT / "nbs" / "index.ipynb")
    readme = ROOT / "README.md"
    if args.check:
        if not readme.exists() or readme.read_text(encoding="utf-8") != text:
            print("README.md is out of date with nbs/index.ipynb: run `make readme` and commit the result", file=sys.stderr)
            return 1
        return 0
    readme.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
