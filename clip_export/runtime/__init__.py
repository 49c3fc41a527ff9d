"""What a serving process imports: ClipOnnx and its serve-time check."""

from clip_export.runtime.serving import ClipOnnx

__all__ = ["ClipOnnx"]
