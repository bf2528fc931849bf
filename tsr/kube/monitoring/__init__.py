"""Monitoring objects: alert rules, the Grafana dashboard and the scrape objects of the predictor
(`python -m tsr.kube.monitoring` writes them into `manifests/monitoring/`)."""
