"""What every provider's webhook routes are built from: the receiver's context for a route
(`Receiver`), body parsing that names each bad field, and the shared signature checks. Each
provider's folder builds its own routes from these; ohx_dagster.receiver mounts them by the
registry, so this kit sits below both."""
