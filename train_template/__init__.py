"""The training template that trials copy and edit; shipped as package data (see agent/template.py)."""
