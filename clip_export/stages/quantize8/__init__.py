"""The INT8 stage (quantize8.py) and its private helpers: the family build and quantizer calls (int8_build.py), the fallbacks for a tower whose plain scheme fails its gate (int8_fallbacks.py)."""
