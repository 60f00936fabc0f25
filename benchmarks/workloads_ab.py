"""One run of the MedM-VL workloads for an alternating A/B comparison (before vs after a change).

Run it back to back with two source trees (``PYTHONPATH`` decides which medvl is imported), e.g. the
base commit's ``src`` (``git archive <commit> src | tar -x -C /tmp/before``, plus today's
``src/medvl/tools/bench/`` copied in) and the working tree's, alternating A, B, A, B::

    for rep in 1 2; do for tree in /tmp/before/src $PWD/src; do
      PYTHONPATH=$tree OMP_NUM_THREADS=1 python benchmarks/workloads_ab.py LABEL out_$rep.json w2d,w3d,i2d
    done; done

Each run measures the fp32 matmul peak and the memory bandwidth first
(``medvl.tools.bench.machine.bench_machine``), records the 1/5/15-minute load average before and after,
and writes the workload results as JSON.

Arguments: ``LABEL OUT.json WORKLOADS [OVERRIDES_JSON]`` where OVERRIDES_JSON maps a workload to
``TrainConfig`` sections, e.g. ``'{"w3d": {"data": {"cache_encoder_features": false}}}'``.
Environment: ``W2D_STEPS`` (and 4x as many records), ``W3D_STEPS``, ``W3D_RECORDS``, ``I2D_PROMPTS``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import replace

import torch


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("transformers", "medvl.train", "medvl.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from medvl.tools.bench.machine import bench_machine
    from medvl.tools.bench.sizes import BenchSizes
    from medvl.tools.bench.table import workload_rows
    from medvl.tools.bench.workload_spec import WorkloadSizes
    from medvl.tools.bench.workloads import bench_workloads

    label, out, which = argv[0], argv[1], argv[2].split(",")
    overrides = json.loads(argv[3]) if len(argv) > 3 else {}
    sizes = WorkloadSizes.full()
    if os.environ.get("W2D_STEPS"):
        steps = int(os.environ["W2D_STEPS"])
        sizes = replace(sizes, w2d_steps=steps, w2d_records=4 * steps)
    for env, key in (("W3D_STEPS", "w3d_steps"), ("W3D_RECORDS", "w3d_records"), ("I2D_PROMPTS", "i2d_prompts")):
        if os.environ.get(env):
            sizes = replace(sizes, **{key: int(os.environ[env])})
    load_start = os.getloadavg()
    machine = bench_machine(BenchSizes(repeats=3))
    started = time.time()
    results = bench_workloads(
        sizes,
        machine["fp32_peak_gflops"],
        which=which,
        overrides=overrides,
        bandwidth_gbs=machine["memory_bandwidth_gbs"],
    )
    results.update(
        label=label,
        src=os.environ.get("PYTHONPATH"),
        machine=machine,
        load_average_start=load_start,
        load_average_end=os.getloadavg(),
        wall=time.time() - started,
    )
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=1)
    for row in workload_rows(results):
        print(*row, sep=" | ")
    print("fp32 peak", machine["fp32_peak_gflops"], "load", load_start, "->", results["load_average_end"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
