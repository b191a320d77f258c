"""Speed of torch_quant against PyTorch baselines, as ratios.

Run ``python -m benchmarks`` from the repository root (``make bench``;
``--help`` for the flags, ``--quick`` for a smoke test on tiny sizes). Every
number in the output comes from this one run: the baselines are measured next
to our ops, in the same process, on the same tensors, so the ratios do not
depend on how fast or how loaded the machine is on a given day, only on how
the two compare. docs/benchmarks.md says what each section measures.

Methodology
-----------
* Timing: ``time.perf_counter`` around one call of each operator (CPU ops are
  synchronous, so the call's wall time is the op's time). Garbage collection is
  off while timing.
* Warm-up: every candidate runs ``--warmup`` times (default 3) before timing,
  so that the allocator has its pools, the pages of the inputs are mapped, the
  thread pool is up and the ISA dispatch has happened.
* Interleaving: the candidates of one comparison are timed round-robin:
  repetition i runs each of them once, in turn. A burst of noise from another
  process on a small machine then hits all of them alike.
* Statistics: ``--repeat`` repetitions (default 21; the linear and e2e
  sections pick fewer for their larger cases); a table shows the median and
  the interquartile range (IQR = q3 - q1) of each candidate. A ratio is the
  ratio of two medians; the goals block also shows the IQR of the
  per-repetition ratios: a FAIL whose IQR straddles the threshold is
  noise-level.
* Load: the header shows the load average, and each section's footer how many
  cores other processes used meanwhile (from /proc/stat), with a WARNING above
  0.2: rerun such a section on an idle machine.
* Bandwidth: effective GB/s = bytes the op must move / median time, 1 GB =
  1e9 bytes.
* Allocation: our ops allocate their output on every call, as torch's do, and
  the timed region includes freeing it.

Modules
-------
timing.py        Config, Candidate, measure, Row, Goal, SectionResult, ratios
tables.py        the text tables and the goals block
system.py        environment, load, /proc/stat and RSS probes
machine.py       section ``machine``: int8 peak, DRAM read and copy bandwidth
quantize.py      sections ``per_tensor``, ``per_token``, ``isa``
linear.py        section ``linear`` (shapes, rows, goals, machine fractions)
linear_peers.py  its candidates (ours packed, quantize_dynamic, _int_mm, torchao) and timing
e2e.py           section ``e2e``: SmolLM2-135M decode and prefill tokens/s
cuda.py          section ``cuda`` (skipped without a GPU)
run.py           the command line
"""
