"""Run configs (ml_collections); see common.py for every field."""
