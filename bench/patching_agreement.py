"""Attribution patching vs activation patching on a finished study: Spearman rank correlation of the estimate with
the measured effect (patched - metric(R)) on the same cells, per pair, alignment, direction and overall; and the
study's time per (pair, direction) from its progress log.

    python -m bench.patching_agreement results/gsm8k-sample-qwen2.5-coder-0.5b/patching
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cot_patching.experiments.attribution import spearman
from cot_patching.experiments.tables import read_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path, help="a `cot-patching patch` output directory")
    args = parser.parse_args()
    rows = [row for row in read_table(args.study / "results.csv") if row["attribution"] is not None]
    if not rows:
        sys.exit(f"error: {args.study}/results.csv has no attribution column values (run patch with --attribution)")
    settings = json.loads((args.study / "settings.json").read_text())
    print(f"study: {args.study} (model {settings['study']['model']['name']}, {len(rows)} cells)")
    print(f"{'group':46s} {'cells':>6s} {'spearman':>9s}")

    def line(name: str, chosen: list[dict]) -> None:
        rho = spearman([r["attribution"] for r in chosen], [r["metric_patched"] - r["metric_recipient"] for r in chosen])
        print(f"{name:46s} {len(chosen):6d} {rho:9.3f}")

    keys = [("pair_id",), ("alignment",), ("direction",), ("pair_id", "direction"), ("alignment", "direction")]
    for key in keys:
        for value in dict.fromkeys(tuple(r[k] for k in key) for r in rows):
            line(" / ".join(f"{k}={v}" for k, v in zip(key, value)),
                 [r for r in rows if tuple(r[k] for k in key) == value])
    line("overall", rows)
    progress = [json.loads(x) for x in (args.study / "progress.jsonl").read_text().splitlines() if x]
    total = sum(entry["seconds"] for entry in progress)
    print(f"time: {total:.1f} s over {len(progress)} (pair, direction) units, "
          f"{sum(entry['rows'] for entry in progress)} cells ({total / max(1, len(progress)):.1f} s per unit); "
          f"{settings['environment']['cpu']}, {settings['environment']['torch_num_threads']} threads, "
          f"gpu {settings['environment']['gpu']}")


if __name__ == "__main__":
    main()
