"""pytorch-grad-cam's ``utils`` module layout, so ``pytorch_grad_cam.utils.X`` imports map 1:1."""
