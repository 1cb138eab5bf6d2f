"""Speech deepfake (spoof) detection: task, corpora, audio."""

from metadg.tasks.spoof import (  # noqa: F401  registers plugins
    asvspoof,
    synthetic_corpus,
    fake_or_real,
    fakeavceleb,
    in_the_wild,
    mlaad,
    task,
    wavefake,
)
