"""Importers: published checkpoints of other code bases as metadg run folders (`metadg import KIND ...`)."""
