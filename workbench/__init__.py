"""The preference workbench: application layer (settings, CLI, generation, rounds, the shapes world, pages)."""
