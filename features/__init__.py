"""Frozen backbones and the HDF5 feature cache.

This package knows nothing of ``pipeline``: it takes a dataset and a backbone and writes a cache.
"""
