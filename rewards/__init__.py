"""Verifiable math: tasks with gold answers (the tiny world, dataset loading) and the verifier.

Never imports `train`.
"""
