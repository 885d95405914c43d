"""A backend that answers trials from models fitted on recorded ones (data.py reads them, model.py fits them,
backend.py answers the loop)."""
