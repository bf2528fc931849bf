"""Monitoring of the predictor: runtime metrics and drift (here), alert rules, dashboard and
scrape objects generated into `manifests/monitoring/` (`python -m serving.monitoring`)."""
