"""Token-level analysis of the shift between a base and an RL model (Meng et al., arXiv 2603.22446).

Pure tensor functions first (`divergence.py`), then analyses, plots, callbacks and CLIs over them.
Never imports `train`.
"""
