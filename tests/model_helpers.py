"""Helpers the model, deploy and export tests share."""


def randomise_bn(module):
    """Trained-like BN statistics and affine parameters, so folding BN is actually exercised."""
    for m in module.modules():
        if hasattr(m, "running_var") and hasattr(m, "weight") and m.weight is not None:
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
