"""Speech deepfake (spoof) detection: task, corpora, audio."""

from metadg.tasks.spoof import corpora, task  # noqa: F401  registers plugins
