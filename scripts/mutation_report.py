"""Print the mutation score per module from mutmut's results in mutants/ (see mutation.sh).

A survivor listed in EQUIVALENT is a mutant that cannot change behaviour; it counts as killed
only with the reason written beside it. Usage: python scripts/mutation_report.py [MODULE...]
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

GOAL = 0.90
# Mutant name -> why no test can tell it from the original.
EQUIVALENT: dict[str, str] = {
    "meshd.security.invite.x_check_host__mutmut_3": (
        'strip("XX[]XX") for strip("[]"): an IP address never starts or ends with X'
    ),
    "meshd.security.invite.x__pack_address__mutmut_8": (
        'strip("XX[]XX") for strip("[]"): an IP address never starts or ends with X'
    ),
    "meshd.gossip.x_retry_delay__mutmut_3": (
        "failures <= 1 for <= 0: after one failure the doubling starts at 2**0, the interval"
    ),
    "meshd.gossip.x_retry_delay__mutmut_5": (
        "failures < GRACE for <=: at GRACE failures the doubling starts at 2**0, the interval"
    ),
    "meshd.gossip.x_retry_delay__mutmut_22": (
        "min(steps, 31) for 30: either way the delay is past MAX_BACKOFF and capped there"
    ),
}


def statuses(meta: Path) -> dict[str, int | None]:
    return dict(json.loads(meta.read_text())["exit_code_by_key"])


def module_of(meta: Path) -> str:
    return ".".join(meta.relative_to("mutants").with_suffix("").with_suffix("").parts)


def main(wanted: list[str]) -> int:
    rows, survivors = [], []
    for meta in sorted(Path("mutants").rglob("*.py.meta")):
        module = module_of(meta)
        if wanted and module not in wanted:
            continue
        counts: Counter[str] = Counter()
        for name, code in statuses(meta).items():
            if code is None:
                counts["not run"] += 1
            elif code == 0 and name in EQUIVALENT:
                counts["equivalent"] += 1
            elif code == 0:
                counts["survived"] += 1
                survivors.append(name)
            else:
                counts["killed"] += 1  # a failing test, a timeout or a crash all notice it
        total = sum(counts.values()) - counts["not run"]
        score = (counts["killed"] + counts["equivalent"]) / total if total else 1.0
        rows.append((module, total, counts["killed"], counts["equivalent"], score))
    print(f"| module | mutants | killed | equivalent | score (goal ≥ {GOAL:.0%}) |")
    print("|---|---|---|---|---|")
    for module, total, killed, equivalent, score in rows:
        mark = "met" if score >= GOAL else "MISSED"
        print(f"| `{module}` | {total} | {killed} | {equivalent} | {score:.0%} {mark} |")
    all_total = sum(r[1] for r in rows)
    all_good = sum(r[2] + r[3] for r in rows)
    print(f"| all | {all_total} | {sum(r[2] for r in rows)} | {sum(r[3] for r in rows)} | "
          f"{all_good / all_total if all_total else 1:.0%} |")  # fmt: skip
    for name in survivors:
        print(f"survived: {name}  (.venv/bin/mutmut show {name})")
    for name, why in EQUIVALENT.items():
        print(f"equivalent: {name}: {why}")
    return 0 if all(r[4] >= GOAL for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
