"""Scale-out on Ray: FSDP2 train workers and data-parallel rollout workers (docs/distributed.md).

``ray_executor.RayExecutor`` executes the parts of ``Trainer.train_step`` on Ray actors
(``workers.py``); ``shard_trainer.ShardTrainer`` is the trainer on one FSDP2 rank; ``fsdp.py``
wraps a model with ``fully_shard`` and moves full tensors in and out of the shards.  Nothing here
is imported by a single-process run.
"""
