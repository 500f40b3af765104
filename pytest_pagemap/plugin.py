"""pytest-pagemap: the pytest plugin (options, fixtures, markers, reports)."""
