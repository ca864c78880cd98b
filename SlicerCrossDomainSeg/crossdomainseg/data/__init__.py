"""Seeded cross-domain segmentation tasks with ground truth (brain-t1-t2, phantom-ct-mr, xray-drr).

`generate_case` renders one subject in memory; `make_task` writes a whole task folder;
`TaskDir` reads one back. The `crossdomainseg data make` command wraps `make_task`."""

from .taskdir import TaskDir
from .tasks import TASKS, Case, generate_case, make_task

__all__ = ["TASKS", "Case", "TaskDir", "generate_case", "make_task"]
