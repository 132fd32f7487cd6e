"""Settings: the environment read in one place, and where files are.

environment.py is the one module of the product that reads the process environment; settings.py
holds the one `Settings` object (the sync's settings, and a section per concern parsed from the
same environment); each section's module lists its variables, defaults and why. config imports
only ohx_dagster.core (an import contract): what it must know of the providers, the registry
hands in (ohx_dagster.providers.registry.CATALOG).
"""
