"""The chapter's experiment on every backend: ``make`` runs it, ``book`` runs the book's own code.
Run from the repository root: ``python -m docs.reproduce.make``."""
