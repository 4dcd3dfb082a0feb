"""Deterministic simulated asynchrony: N logical learners in one process (`downpour simulate`)."""
