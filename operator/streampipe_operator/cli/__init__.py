"""The ``streampipe`` command: the typer app (``app``, wiring only) and one module per verb group.

The top layer: may import every other sub-package. Nothing imports it but the console script.
"""
