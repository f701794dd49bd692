"""The workflows: each step of LayerMerge Studio as one core call returning a frozen dataclass.

A workflow takes a MODEL spelling and plain settings, finds the model's family, and runs the step
with progress callbacks and cancel, so the command line and the app's background jobs call the
same function and show the same numbers. Each lives in its own module (``tables``, ...).
"""
