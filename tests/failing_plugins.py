"""Plug-ins that fail on purpose, for the failure-handling tests (imported by Ray workers too)."""


def fail_at(ctx, version=30.0):
    """A staleness rule that raises when its shard reaches `version` (the smoke test never does)."""
    if ctx.version == int(version):
        raise RuntimeError(f"injected failure at version {ctx.version}")
    return 1.0


def reject_stale(ctx, max_tau=0.0):
    """A gating rule: rejects every push staler than max_tau (for counting rejections)."""
    from ps.server.rules import Decision

    if ctx.tau > max_tau:
        return Decision(0.0, accept=False, reason="stale")
    return 1.0


def nan_model(num_classes: int = 10):
    """A model whose every output is NaN: every gradient it pushes is NaN."""
    import torch

    class NaNNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(28 * 28, num_classes)

        def forward(self, x):
            return self.fc(x.reshape(len(x), -1)) * float("nan")

    return NaNNet()


def transform_without_size(lam=0.1):
    """A gradient-transform factory with the wrong signature: it takes no `size`."""
    from ps.server.transforms import GradientTransform

    class Passthrough(GradientTransform):
        def apply(self, grad, w_now, w_bak, ctx):
            return grad

    return Passthrough()


class TransformWithShortApply:
    """A gradient transform whose `apply` takes the gradient only, not (grad, w_now, w_bak, ctx)."""
    needs_backup = False

    def __init__(self, size):
        self.size = size

    def apply(self, grad):
        return grad
