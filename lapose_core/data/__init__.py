"""Frame sources, window sampling and training datasets."""
