"""The model store's settings (the ``[models]`` section): where versions live, which one to use."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, PositiveInt

# The checkout (or the installed package's parent): the default model store is beside it.
REPO_ROOT = Path(__file__).resolve().parents[2]


class ModelsConfig(BaseModel):
    store: Path = Field(
        REPO_ROOT / "models", description="Model store: one folder per model version."
    )
    version: str | None = Field(
        None, description="Embedder version to use; default: the store's active version."
    )
    batch_size: PositiveInt = Field(32, description="Faces per embedder call.")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime threads; 0 = its default.")
