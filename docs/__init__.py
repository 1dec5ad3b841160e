"""The project's documentation scripts, run from the repository root as modules
(``python -m docs.reproduce.make``)."""
