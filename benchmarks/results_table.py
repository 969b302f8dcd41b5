"""Markdown table of several demo runs (``python -m fastmlr.demo --out DIR``), per seed and averaged.

    python benchmarks/results_table.py runs/results-s0 runs/results-s1

Reads each DIR/results.json; rows are models, columns mAP / CF1 / OF1 per run
and their mean, plus each model's mean difference from ``baseline_cm`` (the
capacity-matched baseline) when it is present.
"""

import json
import os
import sys

KEYS = ("mAP", "CF1", "OF1")


def main(dirs: list[str]) -> str:
    runs = []
    for d in dirs:
        with open(os.path.join(d, "results.json")) as fh:
            runs.append((os.path.basename(os.path.normpath(d)), json.load(fh)))
    models = list(runs[0][1]["results"])
    head = ["model"] + [f"{k} {name}" for name, _ in runs for k in KEYS] + [f"{k} mean" for k in KEYS]
    ref = "baseline_cm" if "baseline_cm" in models else None
    if ref:
        head += [f"{k} vs {ref}" for k in KEYS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def mean(m, k):
        vals = [r["results"][m][k] for _, r in runs if m in r["results"]]
        return 100 * sum(vals) / len(vals)

    for m in models:
        row = [m] + [f"{100 * r['results'][m][k]:.1f}" for _, r in runs for k in KEYS]
        row += [f"{mean(m, k):.1f}" for k in KEYS]
        if ref:
            row += [f"{mean(m, k) - mean(ref, k):+.1f}" for k in KEYS]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print(main(sys.argv[1:]))
