"""The framework-free base: layer selection, freezing, heads, optimizers, configs, errors, atomic files,
interrupts, devices and resumable state. It imports torch, but neither Stable-Baselines3 nor torchvision."""
