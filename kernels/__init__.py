"""Triton kernels and their autograd glue, installed as ``stgcma_fast.kernels``.

One file per op: private ``@triton.jit`` kernels, plain launchers, the ``torch.autograd.Function``, then the
``torch.library.custom_op`` registration. Nothing is compiled at import time.
"""
