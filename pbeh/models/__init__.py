"""Hashing methods beyond the PBEH core: one module (or subpackage) per method.

Nothing is imported here, so ``import pbeh`` stays light; import the method you need, for example
``from pbeh.models import cash``.
"""
