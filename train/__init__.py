"""The bundled COSMO-style pretraining runner (cosmo-data train)."""
