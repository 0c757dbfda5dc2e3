"""The method kit: the ``Method`` contract, the registry (and its ``<name>++`` spellings of the post stage,
a run option), the A-InfoNCE variant derivations, the post stage's settings, pseudo-labels and pinned
downloads. Methods (``methods/`` and plugins) build on it.
"""
