"""The demo world and its model zoo: two languages, arithmetic and general questions, a base and
its fine-tuned specialists trained here with optax and saved as Hugging Face Llama dirs."""

from .build import Recipe, ZooPaths, build_zoo, make_recipe

__all__ = ["Recipe", "ZooPaths", "build_zoo", "make_recipe"]
