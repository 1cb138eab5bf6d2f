"""Shared audio corpus layer: corpus base and registry, file corpora, the `list` reader, audio loading."""

from metadg.tasks.audio import list_corpus  # noqa: F401  registers the `list` corpus
from metadg.tasks.audio.corpus import CORPORA, Corpus, CorpusConfig, LabelMap, default_cache_dir
from metadg.tasks.audio.file_corpus import CorpusError, FileCorpus, FileCorpusConfig, Row
from metadg.tasks.audio.loading import SAMPLE_RATE, AudioError, load_audio

__all__ = ["CORPORA", "SAMPLE_RATE", "AudioError", "Corpus", "CorpusConfig", "CorpusError", "FileCorpus",
           "FileCorpusConfig", "LabelMap", "Row", "default_cache_dir", "load_audio"]
