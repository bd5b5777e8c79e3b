"""Data helpers: the synthetic demo language pair."""
