"""Tensor and expert parallelism inside one worker: N ranks, one process per device.

`config.ParallelConfig` (tp, ep); `comm.Comm` (the process group and its collectives);
`shard` (a rank's slice of the canonical weights); `step_sync` (rank 0 schedules, every rank runs
the same step with the step's chunks broadcast as int64 tensors).
"""
