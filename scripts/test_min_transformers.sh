#!/usr/bin/env bash
# Run the exactness tests (fast paths against plain deletion) on the LOWEST supported transformers, in
# .venv-verl (scripts/setup_verl_env.sh, run first: it does nothing when the env is up to date).
#
# The exactness tests: every file below compares a fast path with scoring each deleted sequence on its own
# (the `loop` backend or one plain forward per sequence), or checks the gate that decides when a fast path may
# be used, on real transformers architectures:
#   tests/scoring/test_scorer_equivalence.py  every backend (trie kernel/mask, batched) == loop, split passes,
#                                             cached prompt, replace removal, pad tokens
#   tests/scoring/test_packed_attention.py    the "scar_tree" attention: packed trie == deleted sequences,
#                                             with and without a cached prompt
#   tests/scoring/test_scorer_shapley.py      Shapley values: trie == loop
#   tests/scoring/test_scorer_cost.py         20,000 coalitions under a token budget (cached prompt) == loop
#   tests/scoring/test_padded.py              right-padded batches == one forward per sequence
#   tests/scoring/test_scorer_models.py       model inspection, the exactness probe, refusals, backend choice
#   tests/scoring/test_reliability.py         the runtime exactness check, model views (threads)
#   tests/credit/test_attribution_many.py     a batch of responses in one forest, small budgets == loop
#
# The verl integration (VERL_TESTS: needs verl and ray, which only this env has):
#   tests/integrations/test_verl.py           the "scar" reward manager == SCAR called directly, verl's
#                                             RewardLoopManager on 2 Ray workers == the manager alone, the
#                                             "scar_grpo" estimator on reordered rows == grouped advantages
#
# Exits non-zero on any failure, when a listed file is missing, when the env has another transformers than
# the pin, and when pytest collects no test (its exit code 5). Extra arguments go to pytest.
# SCAR_SKIP_SETUP=1 skips running setup_verl_env.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SCAR_VERL_VENV:-.venv-verl}
export SCAR_VERL_VENV="$VENV"

TESTS=(
    tests/scoring/test_scorer_equivalence.py
    tests/scoring/test_packed_attention.py
    tests/scoring/test_scorer_shapley.py
    tests/scoring/test_scorer_cost.py
    tests/scoring/test_padded.py
    tests/scoring/test_scorer_models.py
    tests/scoring/test_reliability.py
    tests/scoring/test_sliding_window.py
    tests/scoring/test_softcap_scoring.py
    tests/credit/test_attribution_many.py
)
VERL_TESTS=(
    tests/integrations/test_verl.py
)

[ "${SCAR_SKIP_SETUP:-0}" = 1 ] || bash scripts/setup_verl_env.sh

for f in "${TESTS[@]}" "${VERL_TESTS[@]}"; do
    [ -f "$f" ] || { echo "test_min_transformers: $f is missing" >&2; exit 1; }
done

want=$(sed -n 's/^transformers==\([^ ]*\).*/\1/p' scripts/verl-constraints.txt)
have=$("$VENV/bin/python" -c "import transformers; print(transformers.__version__)")
if [ -z "$want" ] || [ "$have" != "$want" ]; then
    echo "test_min_transformers: $VENV has transformers $have, expected ${want:-<no pin in scripts/verl-constraints.txt>}" >&2
    exit 1
fi
echo "test_min_transformers: exactness and verl tests on transformers $have"

rc=0
"$VENV/bin/python" -m pytest "${TESTS[@]}" "${VERL_TESTS[@]}" -q -p no:cacheprovider "$@" || rc=$?
if [ "$rc" = 5 ]; then
    echo "test_min_transformers: pytest collected no test" >&2
    exit 1
fi
exit "$rc"
