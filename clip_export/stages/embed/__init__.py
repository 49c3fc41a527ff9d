"""The embed stage (embed.py) and its private helpers: the reader, the Parquet store, the Ray engine, the compatibility check."""
