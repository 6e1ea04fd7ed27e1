"""Example services built on this repository's client kits."""
