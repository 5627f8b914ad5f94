"""Cluster config templates (a package only so that wheels ship these YAML files as package data)."""
