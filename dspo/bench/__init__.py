"""Benchmarks and budgets.

Training throughput with counted FLOPs (`dspo bench train`), memory, activations, the
GPU check (``make gpu-check``) and ``dspo budget``.
"""
