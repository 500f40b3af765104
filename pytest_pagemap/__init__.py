"""pytest-pagemap: assert on a subprocess's memory in pytest."""
