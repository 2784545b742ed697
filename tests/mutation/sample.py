"""Keep a seeded random sample of a cosmic-ray session's mutants; skip the rest.

A module whose tests start replica processes costs seconds per mutant, and
the machine has two shared cores, so ``make mutation`` runs every mutant of
the modules with fast tests and a fixed sample of the others.  The fraction
is the config's ``[cosmic-ray.sample] fraction`` (1.0: everything); the seed
is fixed, so a re-run draws the same mutants and scores compare.

    python tests/mutation/sample.py CONFIG SESSION
"""

from __future__ import annotations

import random
import sys

from cosmic_ray.config import load_config
from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult

SEED = 19


def main(config_path: str, session_path: str) -> int:
    fraction = float(load_config(config_path).sub("sample").get("fraction", 1.0))
    with use_db(session_path, WorkDB.Mode.open) as db:
        jobs = sorted(item.job_id for item in db.pending_work_items)
        # Sorted ids are random (uuid4) but the draw must not depend on the
        # database's order: sort by mutation instead.
        items = sorted(db.pending_work_items,
                       key=lambda i: [(str(m.module_path), m.operator_name, m.occurrence)
                                      for m in i.mutations])
        keep = round(len(items) * fraction)
        chosen = {i.job_id for i in random.Random(SEED).sample(items, keep)}
        skipped = [job for job in jobs if job not in chosen]
        db.set_multiple_results(skipped, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
    print(f"{config_path}: {keep} of {len(items)} mutants sampled (fraction {fraction:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
