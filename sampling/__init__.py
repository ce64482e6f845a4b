"""Samplers as plain functions over one contract, denoise(x, t, **cond)."""
