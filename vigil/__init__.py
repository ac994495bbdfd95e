"""Vigil: image anomaly detection with autoencoders, served over HTTP."""
