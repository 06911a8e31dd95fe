"""tune_dsr's benchmark suite: ``python -m benchmarks.run`` (see `benchmarks.run`).

Each part measures tune_dsr against a baseline in the same process on the same machine:
`benchmarks.step` (training epochs vs `benchmarks.reference`, the original system),
`benchmarks.search` (ASHA + TPE vs full-budget trials with patience), `benchmarks.trials`
(Tune's overhead and memory per trial) and `benchmarks.gpu` (CUDA only). Results and how they
were taken: docs/performance.md.
"""
