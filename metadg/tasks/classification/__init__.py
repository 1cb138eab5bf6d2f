"""Multi-class audio classification across recording devices: task, metrics, synthetic scenes, TAU reader."""

from metadg.tasks.classification import scenes_corpus, task, tau  # noqa: F401  registers the task and its corpora
