"""Shipping labels: a tracking number as Code 128 on a 4x6 inch or A6 label (PDF, PNG, SVG, ZPL).

Pure drawing, no HTTP: ``service/labels.py`` serves it. docs/architecture.md says how and why.
"""
