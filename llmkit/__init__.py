"""llmkit: Hugging Face pretrained models from the shell."""

__version__ = "0.1.0"
