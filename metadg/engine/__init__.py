"""The task-agnostic engine: trainer loop, batches, sampling, selection, scoring, evaluation, checkpoints.

Nothing here imports a task package or knows what a class means: it moves
utterances and (N, C) logits and asks the task (`metadg.tasks.base.Task`).
"""
