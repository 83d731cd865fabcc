"""Asymmetric off-policy learning: SAC (Haarnoja et al. 2018, automatic temperature) and TD3 (Fujimoto et al.
2018). The actor sees the "policy" group; the twin Q-functions see the "critic" group (privileged state and
every randomized parameter) and the action.

Many envs feed a replay buffer on the training device each iteration (`num_steps` steps each), as
`n_step`-step transitions; then `num_updates` gradient steps on batches of `batch_size` transitions (the
update-to-data ratio). Both
actors squash their output: action = clip * tanh(u), clip the PolicySpec's action clip, so the actions stay
inside what the ActionMapper passes and the deterministic action (clip * tanh(mean)) is what export ships.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from config.validate import ConfigError, nonnegative, positive
from policies.distributed import Ranks
from policies.networks import ACTIVATIONS, AsymmetricModel, mlp
from policies.ppo import discount

LOG_STD_RANGE = (-5.0, 2.0)  # the SAC actor's log standard deviation, before squashing
# Physics that diverges (a quadrotor spun up by an exploring actor) reports observations up to 1e21 for the
# few steps before MuJoCo flags it and the env resets it; stored and replayed, they would overflow the
# normalizers' and Q-functions' float32 arithmetic. The tasks' real states stay far inside this bound.
OBS_LIMIT = 1e3


def bounded(obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clamp(-OBS_LIMIT, OBS_LIMIT) for k, v in obs.items()}


@dataclass(frozen=True)
class SACCfg:
    """SAC's and TD3's settings (`train.algo` picks which; the TD3-only fields say so)."""

    num_steps: int = field(default=1, metadata=positive())  # env steps per env per iteration
    num_updates: int = field(default=4, metadata=positive())  # gradient steps per iteration
    batch_size: int = field(default=1024, metadata=positive())  # transitions per gradient step
    buffer_size: int = field(default=500_000, metadata=positive())  # transitions the replay buffer holds
    learning_starts: int = field(default=4096, metadata=nonnegative())  # transitions stored before the first update
    gamma: float = field(default=0.99, metadata=discount())
    n_step: int = field(default=1, metadata=positive())  # rewards summed before the bootstrap (1: plain TD)
    tau: float = field(default=0.05, metadata=discount())  # target networks move this far each update
    actor_learning_rate: float = field(default=1e-3, metadata=positive())
    critic_learning_rate: float = field(default=1e-3, metadata=positive())
    max_grad_norm: float = field(default=10.0, metadata=positive())
    actor_hidden: tuple[int, ...] = (64, 64)
    critic_hidden: tuple[int, ...] = (128, 128)
    activation: str = field(
        default="silu",
        metadata={"check": (lambda v: v in ACTIVATIONS, f"must be one of {', '.join(ACTIVATIONS)}")},
    )
    init_std: float = field(default=0.3, metadata=positive())  # SAC: the first actions' spread, before tanh
    # SAC's temperature: its start, its learning rate, and the entropy it steers to (None: -action_dim)
    init_alpha: float = field(default=1e-3, metadata=positive())
    alpha_learning_rate: float = field(default=3e-3, metadata=positive())
    target_entropy: float | None = None
    # TD3 only: Gaussian exploration and target-smoothing noise (fractions of the action clip), actor delay
    exploration_noise: float = field(default=0.2, metadata=nonnegative())
    policy_noise: float = field(default=0.2, metadata=nonnegative())
    noise_clip: float = field(default=0.5, metadata=nonnegative())
    policy_delay: int = field(default=2, metadata=positive())


def check_sac_cfg(cfg: SACCfg, num_envs: int, prefix: str = "train.sac.") -> None:
    """What the fields' own checks cannot see: how they relate to each other and to the env count."""
    if cfg.buffer_size < cfg.batch_size:
        raise ConfigError(
            f"{prefix}buffer_size ({cfg.buffer_size}) is smaller than {prefix}batch_size ({cfg.batch_size}): "
            "a batch could never be drawn"
        )
    per_iteration = num_envs * cfg.num_steps
    if cfg.buffer_size < per_iteration:
        raise ConfigError(
            f"{prefix}buffer_size ({cfg.buffer_size}) is smaller than one iteration's transitions "
            f"(num_envs {num_envs} x {prefix}num_steps {cfg.num_steps} = {per_iteration})"
        )
    if cfg.learning_starts > cfg.buffer_size:
        raise ConfigError(
            f"{prefix}learning_starts ({cfg.learning_starts}) exceeds {prefix}buffer_size ({cfg.buffer_size}): "
            "updates would never start"
        )


class ReplayBuffer:
    """A ring of the last `capacity` transitions, preallocated on the training device.

    Next observations are stored beside each transition (an env's next observation after a reset is
    another episode's first, so they cannot be read off the following row)."""

    def __init__(self, capacity: int, obs_dims: dict[str, int], action_dim: int, device):
        def zeros(*shape):
            return torch.zeros(capacity, *shape, device=device)

        self.capacity = capacity
        self.obs = {k: zeros(d) for k, d in obs_dims.items()}
        self.next_obs = {k: zeros(d) for k, d in obs_dims.items()}
        self.actions = zeros(action_dim)
        self.rewards = zeros()  # n-step: the discounted sum
        self.discounts = zeros()  # what multiplies the next state's value: gamma^steps, 0 after a termination
        self.position = 0  # where the next transition goes
        self.size = 0

    def add(self, obs, actions, rewards, discounts, next_obs) -> None:
        """A batch of `n` transitions, one per env, `(n, ...)` each."""
        n = actions.shape[0]
        rows = (self.position + torch.arange(n, device=actions.device)) % self.capacity
        for k in self.obs:
            self.obs[k][rows] = obs[k]
            self.next_obs[k][rows] = next_obs[k]
        self.actions[rows] = actions
        self.rewards[rows] = rewards
        self.discounts[rows] = discounts
        self.position = (self.position + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        rows = torch.randint(self.size, (batch_size,), generator=generator, device=self.actions.device)
        return {
            **{f"obs/{k}": v[rows] for k, v in self.obs.items()},
            **{f"next_obs/{k}": v[rows] for k, v in self.next_obs.items()},
            "actions": self.actions[rows],
            "rewards": self.rewards[rows],
            "discounts": self.discounts[rows],
        }


class SquashedActor(nn.Module):
    """`normalized policy obs -> action_clip * tanh(u)`. SAC's network also outputs u's log standard
    deviation (a squashed Gaussian); TD3's is deterministic. `forward` is the deterministic action."""

    def __init__(
        self, obs_dim: int, action_dim: int, hidden, activation: str, action_clip: float, stochastic: bool, init_std
    ):
        super().__init__()
        self.action_dim, self.action_clip = action_dim, action_clip
        self.net = mlp(obs_dim, hidden, 2 * action_dim if stochastic else action_dim, activation)
        # Small last-layer weights: the first actions stay near the nominal (hover, default pose).
        head = self.net[-1]
        assert isinstance(head, nn.Linear)
        nn.init.uniform_(head.weight, -1e-3, 1e-3)
        nn.init.zeros_(head.bias)
        if stochastic:
            nn.init.constant_(head.bias[action_dim:], math.log(init_std))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.action_clip * torch.tanh(self.net(obs)[..., : self.action_dim])

    def sample(self, obs: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """SAC: (actions `(n, action_dim)`, their log-probabilities `(n,)` under the squashed Gaussian)."""
        mean, log_std = self.net(obs).split(self.action_dim, dim=-1)
        log_std = log_std.clamp(*LOG_STD_RANGE)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        u = mean + log_std.exp() * noise
        # log N(u) minus log |d action / d u| = log(clip * (1 - tanh(u)^2)), in a form that does not overflow
        log_prob = -0.5 * noise.square() - log_std - 0.5 * math.log(2 * math.pi)
        log_prob = log_prob - (math.log(self.action_clip) + 2 * (math.log(2) - u - F.softplus(-2 * u)))
        return self.action_clip * torch.tanh(u), log_prob.sum(-1)


class OffPolicyModel(AsymmetricModel):
    """The normalizers, the actor, twin Q-functions `(critic obs, action) -> Q` and their targets, and
    SAC's temperature (log alpha)."""

    actor: SquashedActor
    log_alpha: nn.Parameter  # SAC only

    def __init__(self, policy_obs_dim: int, critic_obs_dim: int, action_dim: int, action_clip: float, algo: str, cfg):
        super().__init__(policy_obs_dim, critic_obs_dim)
        self.algo = algo
        self.actor = SquashedActor(
            policy_obs_dim, action_dim, cfg.actor_hidden, cfg.activation, action_clip, algo == "sac", cfg.init_std
        )
        self.critics = nn.ModuleList(
            mlp(critic_obs_dim + action_dim, cfg.critic_hidden, 1, cfg.activation) for _ in range(2)
        )
        self.target_critics = copy.deepcopy(self.critics).requires_grad_(False)
        if algo == "sac":
            self.log_alpha = nn.Parameter(torch.tensor(math.log(cfg.init_alpha)))

    def q_values(self, critics: nn.ModuleList, critic_obs_n: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """`(2, n)`: each Q-function at the normalized critic obs and the actions."""
        x = torch.cat((critic_obs_n, actions), dim=-1)
        return torch.stack([q(x).squeeze(-1) for q in critics])


class Optimizers:
    """The learner's Adam optimizers by name, saved and restored as one (the checkpoint's "optimizer")."""

    def __init__(self, **optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


class OffPolicy:
    """SAC or TD3 (`model.algo`) on one rank: act, record into the replay buffer, update."""

    def __init__(
        self, model: OffPolicyModel, buffer: ReplayBuffer, cfg: SACCfg, generator: torch.Generator, ranks: Ranks
    ):
        self.model, self.buffer, self.cfg, self.generator, self.ranks = model, buffer, cfg, generator, ranks
        self.sac = model.algo == "sac"
        self.learning_rate = cfg.critic_learning_rate  # constant; logged and checkpointed as PPO's is
        self.target_entropy = -float(model.actor.action_dim) if cfg.target_entropy is None else cfg.target_entropy
        optimizers = {
            "actor": torch.optim.Adam(model.actor.parameters(), lr=cfg.actor_learning_rate),
            "critic": torch.optim.Adam(model.critics.parameters(), lr=cfg.critic_learning_rate),
        }
        if self.sac:
            optimizers["alpha"] = torch.optim.Adam([model.log_alpha], lr=cfg.alpha_learning_rate)
        self.optimizer = Optimizers(**optimizers)
        self.updates = 0  # gradient steps taken (TD3 delays its actor's by this count)
        self.window: list[tuple] = []  # the envs' last n_step steps, oldest first, not yet stored

    @torch.no_grad()
    def act(self, obs: dict[str, torch.Tensor]):
        """Exploration actions for a batch of envs; returns (actions, what `record` needs of this step)."""
        obs = bounded(obs)
        self.model.update_normalizers(obs, self.ranks)
        actor, policy_obs_n = self.model.actor, self.model.policy_normalizer(obs["policy"])
        if self.sac:
            actions, _ = actor.sample(policy_obs_n, self.generator)
        else:
            mean = actor(policy_obs_n)
            noise = torch.randn(mean.shape, generator=self.generator, device=mean.device)
            clip = actor.action_clip
            actions = (mean + self.cfg.exploration_noise * clip * noise).clamp(-clip, clip)
        return actions, (obs, actions)

    @torch.no_grad()
    def record(self, record, rewards, terminated, truncated, next_obs) -> None:
        """Store the transition that starts `n_step` steps back, one per env: its rewards summed up to
        this step or its episode's end, the observation there, and the discount of the value there. Only
        `terminated` stops the bootstrap: a time limit is not a failure, and `next_obs` is where the cut
        episode stood (the env's final_obs)."""
        self.window.append((*record, rewards, terminated, terminated | truncated, bounded(next_obs)))
        if len(self.window) < self.cfg.n_step:
            return
        obs, actions = self.window[0][:2]
        gamma = self.cfg.gamma
        returns, discounts = torch.zeros_like(rewards), torch.ones_like(rewards)
        running = torch.ones_like(terminated)
        last = {k: v.clone() for k, v in self.window[-1][-1].items()}  # this step's next obs, bounded
        for _, _, r, term, done, step_next_obs in self.window:
            returns += running * discounts * r
            discounts = torch.where(running, discounts * gamma, discounts)
            ends = running & done  # the episode ended here: its value is bootstrapped from here, or not at all
            for k, v in last.items():
                v[ends] = step_next_obs[k][ends]
            discounts = torch.where(ends & term, torch.zeros_like(discounts), discounts)
            running &= ~done
        self.window.pop(0)
        self.buffer.add(obs, actions, returns, discounts, last)

    def update(self) -> dict[str, float]:
        cfg = self.cfg
        stored = self.buffer.size
        if stored < max(cfg.batch_size, cfg.learning_starts):
            return {"replay/size": float(stored)}
        sums: dict[str, float] = {}
        for _ in range(cfg.num_updates):
            for k, v in self._update_once().items():
                sums[k] = sums.get(k, 0.0) + v
        stats = {k: v / cfg.num_updates for k, v in sums.items()}
        stats["replay/size"] = float(stored)
        stats["learning_rate"] = self.learning_rate
        return stats

    def _update_once(self) -> dict[str, float]:
        cfg, model, actor = self.cfg, self.model, self.model.actor
        b = self.buffer.sample(cfg.batch_size, self.generator)
        policy_n, next_policy_n = (model.policy_normalizer(b[f"{k}/policy"]) for k in ("obs", "next_obs"))
        critic_n, next_critic_n = (model.critic_normalizer(b[f"{k}/critic"]) for k in ("obs", "next_obs"))
        alpha = model.log_alpha.exp().detach() if self.sac else torch.zeros(())

        # Critics: regress both Q-functions on the (n-step) return + its discount * (min of the target
        # Q-functions at the next action, SAC's less alpha * log pi).
        with torch.no_grad():
            if self.sac:
                next_actions, next_log_prob = actor.sample(next_policy_n, self.generator)
            else:  # target policy smoothing
                clip = actor.action_clip
                noise = torch.randn(b["actions"].shape, generator=self.generator, device=b["actions"].device)
                smoothing = (cfg.policy_noise * clip * noise).clamp(-cfg.noise_clip * clip, cfg.noise_clip * clip)
                next_actions = (actor(next_policy_n) + smoothing).clamp(-clip, clip)
                next_log_prob = torch.zeros(())
            next_q = model.q_values(model.target_critics, next_critic_n, next_actions).min(0).values
            target = b["rewards"] + b["discounts"] * (next_q - alpha * next_log_prob)
        q = model.q_values(model.critics, critic_n, b["actions"])
        critic_loss = (q - target).square().mean(-1).sum()
        self._step("critic", critic_loss, model.critics)
        stats = {"loss/critic": critic_loss.item(), "q": q.mean().item()}

        # Actor (TD3: every policy_delay updates): the Q-functions' value of its action, SAC's less alpha * log pi.
        if self.sac or self.updates % cfg.policy_delay == 0:
            if self.sac:
                actions, log_prob = actor.sample(policy_n, self.generator)
                q_pi = model.q_values(model.critics, critic_n, actions).min(0).values
                actor_loss = (alpha * log_prob - q_pi).mean()
            else:
                actor_loss = -model.q_values(model.critics[:1], critic_n, actor(policy_n)).mean()
            self._step("actor", actor_loss, actor)
            stats["loss/actor"] = actor_loss.item()
            if self.sac:
                alpha_loss = -(model.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
                self._step("alpha", alpha_loss, None)
                stats["alpha"] = model.log_alpha.exp().item()
                stats["entropy"] = -log_prob.mean().item()

        # Polyak averaging of the target Q-functions.
        with torch.no_grad():
            for target, online in zip(model.target_critics.parameters(), model.critics.parameters(), strict=True):
                target.lerp_(online, cfg.tau)
        self.updates += 1
        return stats

    def _step(self, name: str, loss: torch.Tensor, clip: nn.Module | None) -> None:
        opt = self.optimizer.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(clip.parameters(), self.cfg.max_grad_norm, foreach=True)
        opt.step()
