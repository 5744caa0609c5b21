"""The REST service (FastAPI) and web page over a gallery; ``create_app`` builds it, ``deepmetric serve``
runs it."""
