"""Benchmarks and budgets: training throughput with counted FLOPs, memory, activations, the GPU check and `dspo budget`."""
