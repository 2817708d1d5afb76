"""Data layer: readers, checks, splits, preprocessing, cache and synthetic phantoms."""
