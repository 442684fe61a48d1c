"""Evaluation: frozen attentive probe."""
