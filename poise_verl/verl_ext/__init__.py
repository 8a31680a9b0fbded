"""Thin adapters that plug :mod:`poise_verl.core` into verl 0.9.1 through its own registries."""
