#!/usr/bin/env bash
# Every check of the project, in order: notebooks and library in sync, clean notebooks, README in sync,
# the notebooks as tests (nbdev_test, CPU only), then pytest (CLI, papermill, resume, real data, browser).
set -euo pipefail
cd "$(dirname "$0")/.."

fingerprint() { find "$@" -type f \( -name '*.py' -o -name '*.ipynb' \) -not -path '*/.ipynb_checkpoints/*' -print0 | sort -z | xargs -0 sha256sum; }

# Run a command that must not change a folder; fail with the fix when it does.
check_unchanged() {
  local folder=$1 fix=$2
  shift 2
  local before after
  before=$(fingerprint "$folder")
  "$@"
  after=$(fingerprint "$folder")
  if [ "$before" != "$after" ]; then
    diff <(echo "$before") <(echo "$after") || true
    echo "$fix" >&2
    exit 1
  fi
}

echo "== nbdev_export leaves medseg_nb/ unchanged"
check_unchanged medseg_nb "medseg_nb/ differs from the notebooks: run nbdev_export and commit both" nbdev_export

echo "== nbdev_clean leaves nbs/ unchanged"
check_unchanged nbs "some notebooks were not clean: run nbdev_clean and commit the result" nbdev_clean

echo "== README.md matches nbs/index.ipynb"
python tests/make_readme.py --check

echo "== nbdev_test (notebooks as tests, CPU)"
nbdev_test --n_workers 2 --timing

echo "== pytest"
python -m pytest tests -q -p no:cacheprovider --timeout 900
