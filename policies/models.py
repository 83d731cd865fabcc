"""The network a training config describes: one builder for the runner (a new run) and export (a checkpoint)."""

from __future__ import annotations

from policies.networks import ActorCritic, AsymmetricModel
from policies.ppo import PPOCfg
from policies.sac import OffPolicyModel, SACCfg


def build_model(
    algo: str, ppo: PPOCfg, sac: SACCfg, policy_obs_dim: int, critic_obs_dim: int, action_dim: int, action_clip: float
) -> AsymmetricModel:
    """PPO's actor-critic, or the off-policy learner's actor and Q-functions (SAC, TD3)."""
    if algo == "ppo":
        return ActorCritic(
            policy_obs_dim,
            critic_obs_dim,
            action_dim,
            ppo.actor_hidden,
            ppo.critic_hidden,
            ppo.activation,
            ppo.init_std,
        )
    return OffPolicyModel(policy_obs_dim, critic_obs_dim, action_dim, action_clip, algo, sac)
