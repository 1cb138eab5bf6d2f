"""Speech deepfake (spoof) detection: task, corpora, audio."""

from metadg.tasks.spoof import corpora, list_corpus, task  # noqa: F401  registers plugins
