"""Kubernetes and OpenShift: YAML for a router (`manifests`) and a checker for existing YAML
(`lint`). Imported only by those subcommands: PyYAML stays off the router's start-up path."""
