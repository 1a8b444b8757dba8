"""The one L-infinity attack path: PGD (the published update is one setting), APGD, Square,
transfer, their registry, and the settings read from the config (attacks.settings)."""
