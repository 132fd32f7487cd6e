"""The domain's core: facts every other part reads (the table of data types)."""
