"""Settings: the environment read in one place, and where files are."""
