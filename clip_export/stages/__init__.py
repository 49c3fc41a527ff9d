"""One module (or one folder with its private helpers) per pipeline stage. No stage imports another."""
