"""Task plugins (DG problems) and the corpora they read."""

from metadg.tasks import audio, classification, spoof  # noqa: F401  registers the built-in tasks and corpora
from metadg.tasks.base import Batch, Headline, Task, Utterances

__all__ = ["Batch", "Headline", "Task", "Utterances"]
