"""The engine: the library pieces every level builds on (models and BN routing, views, losses,
attacks, optimisers, data, corruptions, checkpoints, shards and collectives, console progress).
Nothing here knows about runs, stores or methods: it imports only ``bench.errors``.
"""
