"""The method kit: the ``Method`` contract, the registry, the A-InfoNCE variant and ``++``
derivations, pseudo-labels and pinned downloads. Methods (``methods/`` and plugins) build on it.
"""
