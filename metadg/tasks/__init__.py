"""Task plugins (DG problems)."""

from metadg.tasks import spoof  # noqa: F401  registers the built-in tasks
from metadg.tasks.base import Batch, Task, Utterances

__all__ = ["Batch", "Task", "Utterances"]
