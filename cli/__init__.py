"""The ``spann`` command line (installed as ``spann.cli``)."""
