"""Argument contracts shared by the three trees: one validation function per op, so that
``tops.ops``, ``tops.gpu`` and ``tops.cpu`` reject the same inputs with the same message."""
