from .base import BridgeNet
from .registry import create_model, list_models, register_model

__all__ = ["BridgeNet", "create_model", "list_models", "register_model"]
