"""The SCAR benchmark harness (not installed with the library; ``bench/run.py`` and the ``bench/`` suite
import it from this folder).

Modules, each importing only the ones listed before it:

- :mod:`scar_bench.vocab`: the word-level vocabulary and its locally built tokenizer;
- :mod:`scar_bench.lexicon`: a word-level sentiment world and the reward model trained on it;
- :mod:`scar_bench.workloads`: workloads, their reward models and instances, :data:`~scar_bench.workloads.GRID`,
  and plain right-padded scoring of whole sequences;
- :mod:`scar_bench.measure`: run results, timing, peak memory, the plain-forward reference, the machine;
- :mod:`scar_bench.peers`: adapters for shap, captum and shapiq;
- :mod:`scar_bench.methods`: :func:`~scar_bench.methods.run_method` over peers and this project's engines,
  exact Shapley references and the trie lower bound;
- :mod:`scar_bench.accuracy`: accuracy per unit of compute (study, summary, table, plot);
- :mod:`scar_bench.games`: accuracy per evaluation on sums of unanimity games against shapiq (imports none of
  the modules above);
- :mod:`scar_bench.tables`: engine-table rows, under pytest-benchmark or driven directly;
- :mod:`scar_bench.equal_error`: time per response at equal or lower error than the authors' path;
- :mod:`scar_bench.grid`: the resumable grid driver and its markdown report;
- :mod:`scar_bench.cli`: the command line behind ``python bench/run.py``.
"""
