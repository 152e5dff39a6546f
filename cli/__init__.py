"""The ``ckpt`` command line: a thin click + rich face over the :mod:`ckpt` library."""
