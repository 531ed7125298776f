"""The task-agnostic training engine: run configs, the :class:`Trainer`, schedules, averaging, DDP, logging.

``stgcma-fast train TASK`` and ``stgcma-fast eval TASK`` (:mod:`stgcma_fast.train.cli`) are its command line.
"""
