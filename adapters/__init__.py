"""lto_adapters: front ends that run an lto optimizer inside PyTorch, NumPy, Keras and JAX (optax) loops.

Import the one you need: ``lto_adapters.torch``, ``lto_adapters.numpy``, ``lto_adapters.keras`` or
``lto_adapters.optax``.
Each imports its framework only when imported itself.
"""
