"""Task plugins (DG problems) and the corpora they read.

This is the API for packages that add their own task: subclass `Task`, register it
with `TASKS` (or an entry point in the group `metadg.tasks`), read data through a
`Corpus` registered with `CORPORA` (group `metadg.corpora`).
"""

from metadg.engine.sampling import ClassBalanced, Draw, Partition, SamplingPolicy
from metadg.engine.utterances import ArrayLoader, LoadError, Utterances
from metadg.registry import TASKS
from metadg.tasks import audio, classification, spoof  # noqa: F401  registers the built-in tasks and corpora
from metadg.tasks.audio import CORPORA, Corpus, CorpusConfig, CorpusError, FileCorpus, FileCorpusConfig, Row
from metadg.tasks.audio.corpus import corpus_spec, read_corpus
from metadg.tasks.audio.corpus_task import CorpusTask, CorpusTaskConfig
from metadg.tasks.base import Batch, Headline, Task, softmax

__all__ = ["CORPORA", "TASKS", "ArrayLoader", "Batch", "ClassBalanced", "Corpus", "CorpusConfig", "CorpusError", "CorpusTask", "CorpusTaskConfig", "Draw",
           "FileCorpus", "FileCorpusConfig", "Headline", "LoadError", "Partition", "Row", "SamplingPolicy", "Task",
           "Utterances", "corpus_spec", "read_corpus", "softmax"]
