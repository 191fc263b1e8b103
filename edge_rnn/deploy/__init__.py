"""Deployment variants (int8, fp16, static), their error on long streams, and bundles: no torch."""
