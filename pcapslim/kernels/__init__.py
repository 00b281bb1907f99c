"""Every jitted function of pcapslim, and nothing else.

Kernels are small pure functions over arrays and scalars: no Python objects, no I/O, no
formatted exceptions. They return status codes as data; the modules beside this package turn
them into errors.
"""
