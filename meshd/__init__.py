"""meshd: a mesh of friends' always-on computers that keeps llama.cpp models warm."""

__version__ = "0.1.0"
