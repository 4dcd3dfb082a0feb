"""Model registry: built-in `mlp`, `cnn`, `mlp128`, `mlp512x3` for 28x28 grey images, or `package.module:factory`."""

from typing import Callable

import torch
from torch import nn

from ps.common.errors import UserError
from ps.common.specs import is_plugin_path, load_plugin


def mlp(num_classes: int = 10) -> nn.Module:
    """784-256-10, about 200K parameters: cheap to compute, so communication dominates."""
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 256), nn.ReLU(), nn.Linear(256, num_classes))


def mlp128(num_classes: int = 10) -> nn.Module:
    """784-128-10 with ReLU, 101,770 parameters: the experiments' common-protocol MLP."""
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 128), nn.ReLU(), nn.Linear(128, num_classes))


def mlp512x3(num_classes: int = 10) -> nn.Module:
    """784-512-512-512-10 with ReLU, 932,362 parameters: Keskar et al.'s F1-like network (E8)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(28 * 28, 512), nn.ReLU(),
        nn.Linear(512, 512), nn.ReLU(),
        nn.Linear(512, 512), nn.ReLU(),
        nn.Linear(512, num_classes),
    )


class CNN(nn.Module):
    """Two 3x3 conv + max-pool blocks and two fully connected layers: 421,642 parameters."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x):                                                  # (B, 1, 28, 28)
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)                # (B, 32, 14, 14)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)                # (B, 64, 7, 7)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))               # (B, classes)


def cnn(num_classes: int = 10) -> nn.Module:
    return CNN(num_classes)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp, "cnn": cnn, "mlp128": mlp128, "mlp512x3": mlp512x3,
}


def resolve_factory(name: str) -> Callable[..., nn.Module]:
    if name in MODELS:
        return MODELS[name]
    if is_plugin_path(name):
        factory = load_plugin(name, "model")
        if not callable(factory):
            raise UserError(f"model '{name}' is not callable; it must be a factory returning an nn.Module")
        return factory
    raise UserError(f"model is '{name}': choose one of {', '.join(MODELS)} "
                    "or give your own factory as package.module:function")


def build_model(name: str, seed: int, num_classes: int = 10) -> nn.Module:
    """The model with its initial weights drawn from `seed`, so every process builds the same one.

    A user factory is called with num_classes when it accepts it, else with no arguments.
    """
    factory = resolve_factory(name)
    torch.manual_seed(seed)
    try:
        model = _call_factory(factory, num_classes)
    except UserError:
        raise
    except Exception as exc:  # a user's factory may raise anything: report it at the boundary
        raise UserError(f"model '{name}': the factory raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model '{name}' returned {type(model).__name__}, expected a torch.nn.Module")
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError(f"model '{name}' has no trainable parameters")
    return model


def _call_factory(factory, num_classes):
    try:
        return factory(num_classes=num_classes)
    except TypeError as exc:
        if "num_classes" not in str(exc):
            raise
        return factory()


def named_shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """The trainable tensors in the order that lays out the flat parameter vector."""
    return [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]
