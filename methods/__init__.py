"""Built-in methods: one module per method family, each registering its variants.

``bench.methodkit.registry`` imports every module of this package on discovery, so adding a
method is adding a file here (or a plugin through the ``acl_bench.methods`` entry point).
"""
