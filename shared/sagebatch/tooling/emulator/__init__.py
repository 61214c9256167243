"""A local stand-in for the SageMaker TGI endpoint (see server.py)."""
