"""lto_adapters: front ends that run an lto optimizer inside PyTorch, NumPy and Keras loops.

Import the one you need: ``lto_adapters.torch``, ``lto_adapters.numpy`` or ``lto_adapters.keras``.
Each imports its framework only when imported itself.
"""
