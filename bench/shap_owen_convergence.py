"""Where the authors' path goes with more evaluations: shap Partition at several ``max_evals`` on responses of
the 20-response equal-error record, against the exact Shapley and exact Owen values stored in it.

    .venv/bin/python bench/shap_owen_convergence.py --responses 4,14 --evals 500,2000,5000

Reads ``bench/results/equal_error_20.json`` (``python bench/run.py equal-error --responses 20 --record ...``),
writes ``bench/results/shap_owen_convergence.json`` and prints one line per run. One torch thread.
"""
import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from scar_bench.measure import bench_threads, machine_description, rel_l2
from scar_bench.methods import run_method
from scar_bench.workloads import TRAINED_TARGET_WORKLOAD, make_instance

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--record", default=os.path.join(HERE, "results", "equal_error_20.json"))
    p.add_argument("--responses", default="4,14", help="response indices (seeds) of the record")
    p.add_argument("--evals", default="500,2000,5000", help="shap Partition max_evals")
    p.add_argument("--out", default=os.path.join(HERE, "results", "shap_owen_convergence.json"))
    args = p.parse_args()
    with open(args.record) as f:
        rec = json.load(f)
    rows = []
    with bench_threads():
        for s in (int(x) for x in args.responses.split(",")):
            inst = make_instance(dataclasses.replace(TRAINED_TARGET_WORKLOAD, seed=s))
            ref, owen = (np.array(rec["per_response"][s][k]) for k in ("exact", "owen"))
            for ev in (int(x) for x in args.evals.split(",")):
                t = time.perf_counter()
                r = run_method(inst, "shap-partition", budget=ev)
                rows.append({"response": s, "max_evals": ev, "evals": r.coalitions, "wall": time.perf_counter() - t,
                             "error_vs_shapley": rel_l2(r.values, ref), "distance_to_owen": rel_l2(r.values, owen),
                             "owen_vs_shapley": rel_l2(owen, ref)})
                print(rows[-1], flush=True)
        machine = machine_description()
    with open(args.out, "w") as f:
        json.dump({"command": "python bench/shap_owen_convergence.py " + " ".join(sys.argv[1:]), "machine": machine,
                   "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
