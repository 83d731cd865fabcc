"""Actor and critic networks with per-group empirical observation normalization."""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from policies.distributed import Ranks

ACTIVATIONS = {"elu": nn.ELU, "silu": nn.SiLU, "tanh": nn.Tanh, "relu": nn.ReLU}


class EmpiricalNormalization(nn.Module):
    """(x - running mean) / running std, statistics from every batch seen while training.

    Stored as buffers so the exported ONNX carries them; frozen in eval mode.
    """

    mean: torch.Tensor  # buffers, registered in __init__
    var: torch.Tensor
    std: torch.Tensor
    count: torch.Tensor

    def __init__(self, dim: int, eps: float = 1e-2):
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("std", torch.ones(dim))  # sqrt(var + eps), kept in step with var
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    @torch.no_grad()
    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch `(n, dim)`'s first two moments about the running mean, `(dim,)` each: what `merge`
        takes (averaged over the ranks first in data-parallel training, whose batches are equal in size)."""
        # Column reductions of a row-major batch are ~10x faster as plain means than as torch.var, and
        # centring on the running mean keeps E[d^2] - E[d]^2 precise.
        d = x - self.mean
        return d.mean(0), (d * d).mean(0)

    @torch.no_grad()
    def merge(self, n: int, delta: torch.Tensor, square: torch.Tensor) -> None:
        """Merge `n` samples with `moments` (delta, square) into the running statistics (Chan et al.)."""
        total = self.count + n
        batch_var = (square - delta.square()).clamp_min(0.0)  # delta: batch mean - running mean
        w = float(n / total)
        self.mean += w * delta
        self.var.mul_(1 - w).add_(w * batch_var + w * (1 - w) * delta.square())
        self.std.copy_(torch.sqrt(self.var + self.eps))
        self.count.fill_(total)


class DiagonalGaussian:
    """The policy's action distribution: what PPO needs of it, without torch.distributions' overhead."""

    LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor):
        self.mean, self.log_std = mean, log_std.expand_as(mean)
        self.stddev = self.log_std.exp()

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        return self.mean + self.stddev * torch.randn(self.mean.shape, generator=generator, device=self.mean.device)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """Summed over action dimensions: `(batch,)`."""
        z = (actions - self.mean) / self.stddev
        return (-0.5 * z.square() - self.log_std - self.LOG_SQRT_2PI).sum(-1)

    def entropy(self) -> torch.Tensor:
        return (self.log_std + 0.5 + self.LOG_SQRT_2PI).sum(-1)


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int, activation: str) -> nn.Sequential:
    layers, d = [], in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), ACTIVATIONS[activation]()]
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class AsymmetricModel(nn.Module):
    """What every learner's model shares: a normalizer per observation group, and the `actor` that ships
    (`normalized policy obs -> the deterministic action`, what ExportedActor exports)."""

    actor: nn.Module

    def __init__(self, policy_obs_dim: int, critic_obs_dim: int):
        super().__init__()
        self.policy_normalizer = EmpiricalNormalization(policy_obs_dim)
        self.critic_normalizer = EmpiricalNormalization(critic_obs_dim)

    def action_mean(self, policy_obs: torch.Tensor) -> torch.Tensor:
        """The deterministic action: what the exported policy computes."""
        return self.actor(self.policy_normalizer(policy_obs))

    def update_normalizers(self, obs: dict[str, torch.Tensor], ranks: Ranks) -> None:
        """Both normalizers take the batch (every rank's, averaged in one collective)."""
        moments = [*self.policy_normalizer.moments(obs["policy"]), *self.critic_normalizer.moments(obs["critic"])]
        ranks.mean_(moments, "the observation normalizers' update")
        n = obs["policy"].shape[0] * ranks.world_size
        self.policy_normalizer.merge(n, *moments[:2])
        self.critic_normalizer.merge(n, *moments[2:])


class ActorCritic(AsymmetricModel):
    """Separate actor (policy obs) and critic (critic obs) MLPs; Gaussian policy, state-independent std."""

    def __init__(
        self,
        policy_obs_dim: int,
        critic_obs_dim: int,
        action_dim: int,
        actor_hidden: tuple[int, ...] = (32, 32),
        critic_hidden: tuple[int, ...] = (64, 64),
        activation: str = "silu",
        init_std: float = 0.3,
    ):
        super().__init__(policy_obs_dim, critic_obs_dim)
        self.actor = mlp(policy_obs_dim, actor_hidden, action_dim, activation)
        self.critic = mlp(critic_obs_dim, critic_hidden, 1, activation)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(init_std)).log())
        # Small last-layer weights: the first actions stay near the nominal (hover, default pose).
        head = cast(nn.Linear, self.actor[-1])  # mlp() ends in a Linear
        nn.init.uniform_(head.weight, -1e-3, 1e-3)
        nn.init.zeros_(head.bias)

    def value(self, critic_obs: torch.Tensor) -> torch.Tensor:
        return self.critic(self.critic_normalizer(critic_obs)).squeeze(-1)

    def distribution(self, policy_obs: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.action_mean(policy_obs), self.log_std)


class ExportedActor(nn.Module):
    """What ships to the robot: normalizer + actor, `obs (batch, obs_dim) -> action (batch, action_dim)`."""

    def __init__(self, model: AsymmetricModel):
        super().__init__()
        self.normalizer = model.policy_normalizer
        self.actor = model.actor

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(self.normalizer(obs))
