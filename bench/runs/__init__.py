"""Runs: the plan (one frozen ``MethodRun`` per run), the pipeline and its stages, the
pretraining loop, multi-process orchestration (DDP, sweeps), collecting finished runs and
evaluating released checkpoints.
"""
