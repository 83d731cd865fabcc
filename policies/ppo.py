"""Asymmetric PPO (Schulman et al. 2017): the actor sees the "policy" group, the critic the "critic" group.

Clipped surrogate, clipped value loss, entropy bonus, GAE, and a learning rate adapted to keep the
KL divergence between successive policies near `desired_kl` (as in rsl_rl).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from config.validate import nonnegative, positive
from policies.distributed import Ranks
from policies.networks import ActorCritic
from policies.storage import RolloutStorage
from sim.symmetry import mirrored


def discount():
    """gamma and GAE's lambda weigh later steps: 0 would drop them, above 1 the sums grow without bound."""
    return {"check": (lambda v: 0 < v <= 1, "must be in (0, 1]")}


@dataclass(frozen=True)
class PPOCfg:
    num_steps: int = field(default=32, metadata=positive())  # per env per iteration
    num_epochs: int = field(default=4, metadata=positive())
    num_minibatches: int = field(default=4, metadata=positive())
    gamma: float = field(default=0.98, metadata=discount())
    lam: float = field(default=0.95, metadata=discount())  # GAE's lambda
    clip_ratio: float = field(default=0.2, metadata=positive())
    value_clip: float = field(default=0.2, metadata=positive())
    value_loss_coef: float = field(default=1.0, metadata=nonnegative())
    entropy_coef: float = field(default=0.0, metadata=nonnegative())
    learning_rate: float = field(default=1e-3, metadata=positive())
    desired_kl: float = field(default=0.02, metadata=positive())
    max_learning_rate: float = field(default=1e-2, metadata=positive())  # the KL rule's ceiling
    max_grad_norm: float = field(default=1.0, metadata=positive())
    actor_hidden: tuple[int, ...] = (32, 32)
    critic_hidden: tuple[int, ...] = (64, 64)
    activation: str = field(
        default="silu",
        metadata={"check": (lambda v: v in ("elu", "silu", "tanh", "relu"), "must be elu, silu, tanh or relu")},
    )
    init_std: float = field(default=0.3, metadata=positive())
    # also learn from each sample's left-right mirror image (the robot config's `mirror`; Mittal et al. 2024)
    symmetry: bool = False


class PPO:
    """`ranks`: in data-parallel training, the normalizer updates, gradients and KL are averaged across them.
    `mirror` (BatchedEnv.mirror, with `cfg.symmetry`): every update also learns from the mirrored samples."""

    def __init__(
        self,
        model: ActorCritic,
        storage: RolloutStorage,
        cfg: PPOCfg,
        generator: torch.Generator,
        ranks: Ranks,
        mirror: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ):
        self.model = model
        self.mirror = mirror
        self.storage = storage
        self.cfg = cfg
        self.generator = generator
        self.ranks = ranks
        self.params = list(model.parameters())
        self.learning_rate = cfg.learning_rate
        self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, foreach=True)

    @torch.no_grad()
    def act(self, obs: dict[str, torch.Tensor]):
        """Sample actions for a batch of envs; returns (actions, what the storage needs of this step)."""
        if self.mirror is None:
            self.model.update_normalizers(obs, self.ranks)
        else:  # from the mirror images too: the normalization of a mirrored sample is then the mirrored one's
            both = {k: torch.cat((v, mirrored(v, self.mirror[k]))) for k, v in obs.items()}
            self.model.update_normalizers(both, self.ranks)
        dist = self.model.distribution(obs["policy"])
        actions = dist.sample(self.generator)
        record = (obs, actions, dist.mean, dist.stddev, dist.log_prob(actions), self.model.value(obs["critic"]))
        return actions, record

    @torch.no_grad()
    def record(self, record, rewards, terminated, truncated, next_obs) -> None:
        obs, actions, mean, std, log_prob, values = record
        if truncated.any():
            # A time limit is not a failure: bootstrap the value of where the episode was cut.
            # (next_obs of a reset env is its new first obs; the critic's estimate there stands in.)
            rewards = rewards + self.cfg.gamma * self.model.value(next_obs["critic"]) * truncated
        self.storage.add(obs, actions, mean, std, log_prob, values, rewards, (terminated | truncated).float())

    @torch.no_grad()
    def compute_returns(self, last_obs: dict[str, torch.Tensor]) -> None:
        self.storage.compute_returns(self.model.value(last_obs["critic"]), self.cfg.gamma, self.cfg.lam)

    def update(self) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        sums = {"loss/surrogate": 0.0, "loss/value": 0.0, "loss/entropy": 0.0, "kl": 0.0}
        n = 0
        for batch in self.storage.minibatches(cfg.num_minibatches, cfg.num_epochs, self.generator, self.mirror):
            dist = model.distribution(batch["obs/policy"])
            log_prob = dist.log_prob(batch["actions"])
            entropy = dist.entropy().mean()
            values = model.value(batch["obs/critic"])

            # KL(old || new) between diagonal Gaussians: it adapts the learning rate below. Over the samples
            # collected only: at a mirror image it would also measure how asymmetric the policy still is
            # (the old mean there is the mirrored one), and hold the learning rate at its floor.
            with torch.no_grad():
                old_mu, old_sigma = batch["action_mean"], batch["action_std"]
                kl_each = (
                    torch.log(dist.stddev / old_sigma)
                    + (old_sigma.square() + (old_mu - dist.mean).square()) / (2 * dist.stddev.square())
                    - 0.5
                ).sum(-1)
                kl = kl_each[~batch["mirrored"]].mean() if "mirrored" in batch else kl_each.mean()

            # Clipped surrogate objective.
            ratio = torch.exp(log_prob - batch["log_prob"])
            adv = batch["advantages"]
            surrogate = -torch.min(ratio * adv, ratio.clamp(1 - cfg.clip_ratio, 1 + cfg.clip_ratio) * adv).mean()

            # Clipped value loss.
            old_values = batch["values"]
            clipped = old_values + (values - old_values).clamp(-cfg.value_clip, cfg.value_clip)
            value_loss = torch.max((values - batch["returns"]).square(), (clipped - batch["returns"]).square()).mean()

            loss = surrogate + cfg.value_loss_coef * value_loss - cfg.entropy_coef * entropy
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # Every rank steps the same weights at the same rate: the gradients and the KL are averaged
            # across the ranks (one collective; the losses ride along for the log) before either is used.
            scalars = torch.stack((kl, surrogate.detach(), value_loss.detach(), entropy.detach()))
            self.ranks.mean_([p.grad for p in self.params if p.grad is not None] + [scalars], "the gradient average")
            kl_mean, surrogate_mean, value_mean, entropy_mean = scalars.tolist()
            if kl_mean > 2 * cfg.desired_kl:
                self.learning_rate = max(1e-5, self.learning_rate / 1.5)
            elif 0 < kl_mean < cfg.desired_kl / 2:
                self.learning_rate = min(cfg.max_learning_rate, self.learning_rate * 1.5)
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rate
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm, foreach=True)
            self.optimizer.step()

            sums["loss/surrogate"] += surrogate_mean
            sums["loss/value"] += value_mean
            sums["loss/entropy"] += entropy_mean
            sums["kl"] += kl_mean
            n += 1
        self.storage.clear()
        stats = {k: v / n for k, v in sums.items()}
        stats["learning_rate"] = self.learning_rate
        stats["action_std"] = model.log_std.detach().exp().mean().item()
        return stats
