"""finetune: fine-tune small open LLMs with QLoRA from one YAML recipe."""

__version__ = "0.1.0"
