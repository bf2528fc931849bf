"""The predictor's runtime metrics (prometheus-client); the rules, dashboard and scrape objects that use
them are in `tsr.kube.monitoring`."""
