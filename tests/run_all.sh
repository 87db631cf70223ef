#!/usr/bin/env bash
# Every check of the project, in order: notebooks and library in sync, clean notebooks, README in sync,
# the notebooks as tests (nbdev_test, CPU only), then pytest (CLI, papermill, resume, real data, browser).
set -euo pipefail
cd "$(dirname "$0")/.."

fingerprint() { find "$@" -type f \( -name '*.py' -o -name '*.ipynb' \) -not -path '*/.ipynb_checkpoints/*' -print0 | sort -z | xargs -0 sha256sum; }

echo "== nbdev_export leaves medseg_nb/ unchanged"
before=$(fingerprint medseg_nb)
nbdev_export
after=$(fingerprint medseg_nb)
if [ "$before" != "$after" ]; then
  diff <(echo "$before") <(echo "$after") || true
  echo "medseg_nb/ differs from the notebooks: run nbdev_export and commit both" >&2
  exit 1
fi

echo "== nbdev_clean leaves nbs/ unchanged"
before=$(fingerprint nbs)
nbdev_clean
after=$(fingerprint nbs)
if [ "$before" != "$after" ]; then
  diff <(echo "$before") <(echo "$after") || true
  echo "some notebooks were not clean: run nbdev_clean and commit the result" >&2
  exit 1
fi

echo "== README.md matches nbs/index.ipynb"
python tests/make_readme.py --check

echo "== nbdev_test (notebooks as tests, CPU)"
nbdev_test --n_workers 2 --timing

echo "== pytest"
python -m pytest tests -q -p no:cacheprovider --timeout 900
