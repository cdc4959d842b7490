"""Triton GPU kernels behind the engine/ops interface; the tests run them under TRITON_INTERPRET=1.

Each kernel has a plain-torch reference it is tested against (named in each module's docstring).
Import the kernel modules directly: importing this package imports no kernel, so code paths that
never run Triton do not pay for compiling its decorators.
"""
