"""Reproduction of Razin et al. 2025's three findings on the offline CPU model (docs/REPRODUCTION.md)."""
