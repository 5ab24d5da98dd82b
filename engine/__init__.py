"""Classifier Lab engine: everything that computes. Never imports streamlit."""

__version__ = "0.1.0"
