"""Deployment: a trained run as a detector to score with, export (ONNX) and serve (MLflow)."""
