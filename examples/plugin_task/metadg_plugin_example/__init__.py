"""Example metadg plugin: the `tone_pitch` task and the `tones` corpus it reads.

Nothing is registered on import: metadg loads `task:TonePitch` and
`corpus:TonesCorpus` through the entry points of this distribution
(groups `metadg.tasks` and `metadg.corpora`) when a YAML names them.
"""

__version__ = "0.1.0"
