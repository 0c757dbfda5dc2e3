"""Products: what a user reads or takes away, built on stored runs: statistics, comparisons,
reports, published-table reproduction, export and speed measurements.
"""
