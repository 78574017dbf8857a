"""The RL layer on Stable-Baselines3 and gymnasium: environments, source reading, weight mapping, training,
transfer and chains, callbacks and checkpoints."""
