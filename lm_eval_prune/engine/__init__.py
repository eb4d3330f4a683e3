"""The engine: settings, registries of methods and allocations, calibration, the layer loop and the pure maths.

Imports torch and transformers (except ``config``, ``methods``, ``registry`` and ``report``, which stay torch-free).
"""
