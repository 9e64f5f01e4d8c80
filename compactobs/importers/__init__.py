"""Importers: spend recorded elsewhere, written into the store through the same path as live recording."""
