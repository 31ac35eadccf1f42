"""Dashboards, alerts and scrape objects for the predictors and the traffic controller.

Everything here is generated from the metric objects in predictor/metrics.py and the name
constants in controller/metrics.py, so a renamed metric changes the dashboards and alerts with
it. ``python -m observability`` writes deploy/monitoring/; ``--check`` fails when the committed
files differ from what the code generates.
"""
