"""The paper's tasks on STG-CMA features (AVE now; AVS-S4 and MUSIC-AVQA plug into the same interface).

See :mod:`stgcma_fast.tasks.base` for the interface the trainer runs.
"""

from stgcma_fast.tasks.base import Metrics, StepResult, Task, get_task, register_task, task_names

__all__ = ["Metrics", "StepResult", "Task", "get_task", "register_task", "task_names"]
