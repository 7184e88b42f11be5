"""Model weights on disk: safetensors only (loadable without pickle), whatever wraps the model.

    save_weights("model.safetensors", model)      # DDP / torch.compile wrappers are looked through
    load_weights("model.safetensors", model)
"""

from __future__ import annotations

from typing import Any

MODEL_FILE = "model.safetensors"


def unwrap(model: Any) -> Any:
    """The plain module under DDP and/or torch.compile wrappers."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def state_on_cpu(model: Any) -> dict[str, Any]:
    """Contiguous CPU copies of the unwrapped model's state dict (shared storage cloned apart)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in unwrap(model).state_dict().items()}


def save_state(path: str, state: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """A state dict of tensors as safetensors."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, path, metadata=metadata)


def load_state(path: str) -> dict[str, Any]:
    """A safetensors file as a CPU state dict."""
    from safetensors.torch import load_file

    return load_file(path, device="cpu")


def save_weights(path: str, model: Any, metadata: dict[str, str] | None = None) -> None:
    """The model's state dict as safetensors."""
    save_state(path, state_on_cpu(model), metadata)


def load_weights(path: str, model: Any, strict: bool = True) -> Any:
    """Load safetensors weights into ``model`` (no pickle involved); returns the load result."""
    return unwrap(model).load_state_dict(load_state(path), strict=strict)
