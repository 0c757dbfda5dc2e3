"""The store: what a run leaves on disk (result rows, per-image records, run directories,
atomic writes, provenance). Imports the engine and the config only.
"""
