"""``medvl bench``: CPU throughput of medvl as ratios and as fractions of limits measured on this machine.

Performance is measured, not asserted. Every suite reports absolute numbers (tokens/s, volumes/s),
ratios between two ways of doing the same work (packed/padded, batched/single, cached/raw), and,
where a machine limit applies, the fraction of that limit *measured on this machine in the same run*.
The machine is usually shared: every timing is the best (minimum) of ``repeats`` runs after a
warm-up, and the load average before and after is recorded with the results.

Modules, in reading order:

* ``sizes``: the suite names and the problem sizes of a run (:class:`BenchSizes`, full / quick).
* ``timing``: best-of-N wall time, torch thread counts, peak resident memory of a call.
* ``machine``: the ``machine`` suite: matmul GFLOP/s (fp32, bf16) and memory bandwidth.
* ``bench_model``: the small medvl model of the ``train`` / ``generate`` suites and its text data.
* ``train_suite``, ``generate_suite``, ``volume_suite``: the three suites.
* ``run``: :func:`run_benchmarks`, the driver (``medvl bench`` calls it).
* ``table``: the plain-text table of the results (:func:`format_bench_table`).
* ``workload_spec``, ``workload_data``, ``flops``, ``phases``, ``train_workload``, ``decode_workload``,
  ``workloads``: the opt-in ``workloads`` suite (MedM-VL's W2D, W3D fine-tuning and I2D decoding at
  their real sizes, with essential FLOPs and per-phase profiles).

Example::

    from medvl.tools.bench.run import run_benchmarks
    from medvl.tools.bench.table import format_bench_table

    results = run_benchmarks(["machine", "train"], quick=True)
    print(format_bench_table(results))
"""
