"""MountainCar, Acrobot and Pendulum with changed physics (CARL-style context), spaces unchanged."""

from __future__ import annotations

from typing import Any

from gymnasium.envs.classic_control.acrobot import AcrobotEnv
from gymnasium.envs.classic_control.mountain_car import MountainCarEnv
from gymnasium.envs.classic_control.pendulum import PendulumEnv

from rltransfer.envs.base import ContextParam, EnvFamily

MOUNTAIN_CAR_PARAMS = {
    "force": ContextParam(0.001, 0.0002, 0.005, "engine force per step"),
    "gravity": ContextParam(0.0025, 0.0005, 0.01, "gravity pulling the car down the slope"),
    "goal_position": ContextParam(0.5, 0.2, 0.55, "position of the flag on the right hill"),
    "goal_velocity": ContextParam(0.0, 0.0, 0.05, "speed the car must have at the flag"),
}


class MountainCarContextEnv(MountainCarEnv):
    """gymnasium's MountainCar-v0 with its constants as constructor arguments."""

    def __init__(self, render_mode: str | None = None, **context: Any) -> None:
        super().__init__(render_mode=render_mode)
        MOUNTAIN_CAR.apply(self, context)


MOUNTAIN_CAR = EnvFamily(
    name="MountainCar",
    entry_point="rltransfer.envs.classic:MountainCarContextEnv",
    params=MOUNTAIN_CAR_PARAMS,
    variants={
        "MountainCarWeakEngine": {"force": 0.0007},
        "MountainCarStrongEngine": {"force": 0.0015},
        "MountainCarHighGravity": {"gravity": 0.0035},
        "MountainCarLowGravity": {"gravity": 0.0015},
    },
    max_episode_steps=200,
    reward_threshold=-110.0,
    random_only_at_reset=True,
    resample_context=True,
    doc="drive an underpowered car up a hill (MountainCar-v0 dynamics, 200 steps, solved at -110)",
)

ACROBOT_PARAMS = {
    "link_length_1": ContextParam(
        1.0, 0.3, 3.0, "length of the first link in metres", attribute="LINK_LENGTH_1"
    ),
    "link_mass_1": ContextParam(1.0, 0.2, 5.0, "mass of the first link in kg", attribute="LINK_MASS_1"),
    "link_mass_2": ContextParam(1.0, 0.2, 5.0, "mass of the second link in kg", attribute="LINK_MASS_2"),
    "link_com_pos_1": ContextParam(
        0.5, 0.1, 1.0, "centre of mass of the first link (m from the joint)", attribute="LINK_COM_POS_1"
    ),
    "link_com_pos_2": ContextParam(
        0.5, 0.1, 1.0, "centre of mass of the second link (m from the joint)", attribute="LINK_COM_POS_2"
    ),
    "link_moi": ContextParam(1.0, 0.2, 5.0, "moment of inertia of both links", attribute="LINK_MOI"),
    "dt": ContextParam(0.2, 0.05, 0.4, "seconds per step"),
    "torque_noise_max": ContextParam(0.0, 0.0, 0.5, "uniform noise added to the applied torque"),
}


class AcrobotContextEnv(AcrobotEnv):
    """gymnasium's Acrobot-v1 with its link constants, time step and torque noise as constructor arguments."""

    def __init__(self, render_mode: str | None = None, **context: Any) -> None:
        super().__init__(render_mode=render_mode)
        ACROBOT.apply(self, context)


ACROBOT = EnvFamily(
    name="Acrobot",
    entry_point="rltransfer.envs.classic:AcrobotContextEnv",
    params=ACROBOT_PARAMS,
    variants={
        "AcrobotLongLink": {"link_length_1": 1.5},
        "AcrobotHeavyLink": {"link_mass_2": 2.0},
        "AcrobotNoisyTorque": {"torque_noise_max": 0.2},
    },
    max_episode_steps=500,
    reward_threshold=-100.0,
    random_only_at_reset=True,
    resample_context=True,
    step_noise="torque_noise_max",
    doc="swing a two-link arm above a line (Acrobot-v1 dynamics, 500 steps, solved at -100)",
)

PENDULUM_PARAMS = {
    "g": ContextParam(10.0, 1.0, 30.0, "gravity in m/s^2"),
    "m": ContextParam(1.0, 0.2, 3.0, "pendulum mass in kg"),
    "l": ContextParam(1.0, 0.3, 3.0, "pendulum length in metres"),
    "dt": ContextParam(0.05, 0.01, 0.1, "seconds per step"),
}


class PendulumContextEnv(PendulumEnv):
    """gymnasium's Pendulum-v1 (continuous torque) with gravity, mass, length and time step as arguments."""

    def __init__(self, render_mode: str | None = None, **context: Any) -> None:
        super().__init__(render_mode=render_mode)
        PENDULUM.apply(self, context)


PENDULUM = EnvFamily(
    name="Pendulum",
    entry_point="rltransfer.envs.classic:PendulumContextEnv",
    params=PENDULUM_PARAMS,
    variants={
        "PendulumHighGravity": {"g": 15.0},
        "PendulumLowGravity": {"g": 5.0},
        "PendulumHeavy": {"m": 1.5},
        "PendulumLong": {"l": 1.5},
    },
    max_episode_steps=200,
    reward_threshold=None,
    random_only_at_reset=True,
    resample_context=True,
    doc="swing a pendulum up and hold it (Pendulum-v1 dynamics, continuous torque, 200 steps; SAC/TD3)",
)
