"""One module per CLI verb: ``add_arguments(parser)`` and ``run(args) -> int``.

Command modules only parse and call the library; they import heavy libraries inside ``run``.
"""
