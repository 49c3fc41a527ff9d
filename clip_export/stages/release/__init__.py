"""The release stage (release.py) and its private helpers: the model card, the Hugging Face layout, the client check."""
